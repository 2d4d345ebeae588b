#!/usr/bin/env bash
# Global leak check after the test suite: no VM, helper, shim, private
# containerd, state directory, share directory, mount or network namespace
# of ours may be left anywhere on the host.
set -uo pipefail
fail=0
# A helper that exits after its parent (virtiofsd's sandboxed child, once
# the shim is gone) is reaped by init, which may take a moment: a zombie
# gets up to 10 s. Prints the pids among $1 that live, or stay zombies.
leaked_pids() {
    local live="" zombies=""
    for p in $1; do
        case "$(ps -o stat= -p "$p" 2>/dev/null)" in
            "") ;;
            Z*) zombies="$zombies $p" ;;
            *) live="$live $p" ;;
        esac
    done
    for _ in $(seq 100); do
        [ -z "${zombies// /}" ] && break
        sleep 0.1
        zombies=$(for p in $zombies; do
            ps -o stat= -p "$p" 2>/dev/null | grep -q '^Z' && echo "$p"; done)
    done
    echo $live $zombies
}
for pat in 'qemu-system' 'virtiofsd' 'vhost-device-vsock' 'kata-ctl boot-check' \
    '^(\S*/)?containerd-shim-kata-v2( |$)' 'containerd --config /run/kata-test/'; do
    pids=$(pgrep -f -- "$pat" | grep -v "^$$\$" || true)
    pids=$(leaked_pids "$pids")
    if [ -n "$pids" ]; then
        echo "leak: processes matching '$pat':"; ps -o pid,args -p $pids; fail=1
    fi
done
# Shims a test containerd started carry its socket under /run/kata-test.
pids=$(pgrep -f -- '-address /run/kata-test/' || true)
if [ -n "$pids" ]; then
    echo "leak: shims of a test containerd:"; ps -o pid,args -p $pids; fail=1
fi
for d in /run/kata /run/kata-containers/shared/sandboxes /run/kata-shim /run/vc/sbs \
    /run/kata-test /var/lib/kata-test /run/containerd/s; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then
        echo "leak: $d is not empty:"; ls -la "$d"; fail=1
    fi
done
if grep -E ' /run/kata(-containers|-shim|-test)?/| /var/lib/kata-test/' /proc/self/mountinfo; then
    echo "leak: mounts of ours are left"; fail=1
fi
if ip netns list 2>/dev/null | grep -q '^kata-test-'; then
    echo "leak: network namespaces of the CRI-O driver:"; ip netns list | grep '^kata-test-'; fail=1
fi
# containerd's CRI plugin pins each pod's netns as cni-*; the test CNI
# bridges are kt<8 hex digits>; pod cgroups go under k8s.io.
# Each test containerd has its own bridge and subnet: a namespace's
# address names the test that left it, and its processes what still runs.
if ip netns list 2>/dev/null | grep -q '^cni-'; then
    echo "leak: CNI network namespaces:"
    for ns in $(ip netns list | awk '/^cni-/ {print $1}'); do
        echo "$ns: $(ip -n "$ns" -o -4 addr show 2>/dev/null | awk '{print $2, $4}' | tr '\n' ' ')pids: $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
    done
    fail=1
fi
if ip -o link show 2>/dev/null | grep -qE '^[0-9]+: kt[0-9a-f]{8}[:@]'; then
    echo "leak: test CNI bridges:"; ip -o link show | grep -E '^[0-9]+: kt[0-9a-f]{8}[:@]'; fail=1
fi
# The CRI-O driver's host veths are kv<13 hex digits>; the shim's taps are
# tap<N>_kata in a pod's netns (or anywhere, if one escaped).
if ip -o link show 2>/dev/null | grep -qE '^[0-9]+: kv[0-9a-f]{13}[:@]'; then
    echo "leak: veths of the CRI-O driver:"; ip -o link show | grep -E '^[0-9]+: kv[0-9a-f]{13}[:@]'; fail=1
fi
for ns in "" $(ip netns list 2>/dev/null | awk '{print $1}'); do
    taps=$(ip ${ns:+-n "$ns"} -o link show 2>/dev/null | grep -E '^[0-9]+: tap[0-9]+_kata[:@]' || true)
    if [ -n "$taps" ]; then
        echo "leak: taps of ours in netns '${ns:-root}':"; echo "$taps"; fail=1
    fi
done
pod_cgroups=$(find /sys/fs/cgroup/*/k8s.io -mindepth 1 -type d 2>/dev/null)
if [ -n "$pod_cgroups" ]; then
    echo "leak: host cgroups of CRI pods (with the processes still in them):"
    for cg in $pod_cgroups; do
        echo "$cg: $(cat "$cg/cgroup.procs" 2>/dev/null | tr '\n' ' ')"
    done
    fail=1
fi
if ls -d /sys/fs/cgroup/*/kata-test-* >/dev/null 2>&1; then
    echo "leak: host cgroups of test pods:"; ls -d /sys/fs/cgroup/*/kata-test-*; fail=1
fi
if [ "$fail" = 0 ]; then echo "leak-check: nothing left behind"; fi
exit $fail
