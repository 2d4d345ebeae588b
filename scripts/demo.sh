#!/usr/bin/env bash
# The demo behind `make demo`: boot one pod VM the way the shim does (guest
# image built from this node's kernel, agent as PID 1, hybrid vsock,
# virtio-fs), print what the guest reports next to what the host reports,
# and leave nothing behind. Exits non-zero if any step fails.
set -euo pipefail
KATA_CTL=${1:-kata-ctl}

json=$(mktemp)
trap 'rm -f "$json"' EXIT
echo "== booting a kata VM (kata-ctl boot-check)"
# The shim log goes to stderr; keep the demo to warnings (KATA_LOG=info for all).
KATA_LOG=${KATA_LOG:-warn} "$KATA_CTL" boot-check --json >"$json"

field() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v)' "$json" "$1"; }

host_kernel=$(uname -r)
guest_kernel=$(field kernel_release)
printf '\n%-16s | %-40s | %s\n' "" "host" "kata VM"
printf '%-16s-+-%-40s-+-%s\n' "----------------" "----------------------------------------" "----------------------------------------"
printf '%-16s | %-40s | %s\n' "uname -r" "$host_kernel" "$guest_kernel"
printf '%-16s | %-40s | %s\n' "uptime (s)" "$(cut -d' ' -f1 /proc/uptime)" "$(field uptime_seconds)"
printf '%-16s | %-40s | %s\n' "CPUs" "$(nproc)" "$(field online_cpus)"
printf '%-16s | %-40s | %s\n' "memory (MiB)" "$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 ))" "$(( $(field mem_total_kib) / 1024 ))"
echo
echo "host  /proc/cmdline: $(cat /proc/cmdline)"
echo "guest /proc/cmdline: $(field kernel_cmdline)"
echo
echo "sandbox $(field sandbox_id): qemu pid $(field qemu_pid), accel $(field accel), vsock $(field vsock), shared fs $(field shared_fs) (host file visible in guest: $(field share_visible))"
echo "phases: spawn $(field spawn_ms) ms, agent ready $(field agent_ready_ms) ms after spawn, stop $(field stop_ms) ms ($(field stop_how))"
if [ "$host_kernel" != "$guest_kernel" ]; then
    echo
    echo "note: the guest runs $guest_kernel, not the host's $host_kernel, because the running"
    echo "      kernel's image is not on disk here; kata-guest-image used the newest installed"
    echo "      kernel that has modules (see its warning above)."
fi
[ "$(field share_visible)" = "True" ] || { echo "demo: the share was not visible in the guest" >&2; exit 1; }
if pgrep -f "sandbox-$(field sandbox_id)" >/dev/null; then
    echo "demo: QEMU of the demo sandbox is still running" >&2; exit 1
fi
echo
echo "demo: OK, the VM is stopped and nothing is left behind"
