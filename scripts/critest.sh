#!/usr/bin/env bash
# `make critest`: the cri-tools validation suite (critest v1.32) against a private CRI-O v1.32,
# first with runc, the reference, then with our `kata` handler, and CRITEST.md comparing the two.
# It is not part of `make test`: it needs CRI-O and cri-tools built from their sources, and CI
# has no copy of those (scripts/critest/build-cri-tools.sh builds them).
#
# Environment:
#   CRI_TOOLS_BIN     crio, pinns, crictl and critest (default target/cri-tools)
#   CRITEST_HANDLERS  the handlers to run, in order (default "runc kata")
#   CRITEST_FOCUS     a ginkgo focus regex, to rerun a subset of the specs
#   CRITEST_SKIP      a ginkgo skip regex
#   CRITEST_ARGS      more critest flags (split on spaces)
#   CRITEST_SHIM      the shim for the kata handler (default: the runtime_path of
#                     configs/crio/50-kata, i.e. the installed /usr/bin/containerd-shim-kata-v2)
#   CRITEST_REPORT    where the report goes (default CRITEST.md; target/critest/CRITEST.md when
#                     CRITEST_FOCUS or CRITEST_SKIP is set, so a subset never replaces the full one)
# Logs and JUnit reports go to target/critest/. Exit status: 0 when every spec that passes with
# runc passes with kata or has a reason in scripts/critest/known.tsv, 1 otherwise, 2 when the
# harness itself could not run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
here=$root/scripts/critest
bin=$(realpath -m "${CRI_TOOLS_BIN:-target/cri-tools}")
read -r -a handlers <<<"${CRITEST_HANDLERS:-runc kata}"
focus=${CRITEST_FOCUS:-}
skip=${CRITEST_SKIP:-}
read -r -a extra <<<"${CRITEST_ARGS:-}"
out=$root/target/critest
report=${CRITEST_REPORT:-}
if [[ -z $report ]]; then
    if [[ -n $focus || -n $skip ]]; then report=$out/CRITEST.md; else report=$root/CRITEST.md; fi
fi
# All state lives in W, so that cleaning up is "stop what runs there, unmount what is mounted
# there, remove it". The bridge, subnet and registry port differ from CRI-O's defaults and from
# the test harness (tests/common), so a node's own CRI-O and `make test` can run alongside.
W=/run/kata-critest
sock=$W/crio.sock
bridge=kcrit0
subnet=10.98.0.0/16
registry=127.0.0.1:5077

die() { echo "critest: $*" >&2; exit 2; }

# The binaries first: without them nothing else matters, and the one line says how to get them.
for b in crio pinns crictl critest; do
    [[ -x $bin/$b ]] || die "no $bin/$b: build CRI-O and cri-tools v1.32.0 from git clones of github.com/cri-o/cri-o and github.com/kubernetes-sigs/cri-tools with: scripts/critest/build-cri-tools.sh CRIO_GIT_DIR CRITOOLS_GIT_DIR ${CRI_TOOLS_BIN:-target/cri-tools}"
done
[[ $EUID -eq 0 ]] || die "needs root (it runs CRI-O)"
((${#handlers[@]})) || die "CRITEST_HANDLERS is empty"
for h in "${handlers[@]}"; do
    [[ $h == runc || $h == kata ]] || die "unknown handler '$h' in CRITEST_HANDLERS (runc, kata)"
done
# conmon and runc come from PATH (CRI-O passes its own PATH on): make sure the sbin dirs are in it.
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
for c in conmon runc skopeo jq docker-registry gcc curl python3 ip flock iptables ipcrm; do
    command -v "$c" >/dev/null || die "no $c: apt-get install conmon runc skopeo jq docker-registry gcc curl iproute2 iptables util-linux busybox-static containernetworking-plugins"
done
for f in /bin/busybox /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
    [[ -x $f ]] || die "no $f: apt-get install busybox-static containernetworking-plugins"
done

kata_conf=$W/conf.d/50-kata
shim=""
if [[ " ${handlers[*]} " == *" kata "* ]]; then
    shim=${CRITEST_SHIM:-$(sed -n 's/^runtime_path *= *"\(.*\)"/\1/p' configs/crio/50-kata)}
    [[ -x $shim ]] || die "no shim $shim for the kata handler: run make install and make image (or CRITEST_HANDLERS=runc)"
    # The guest image: the shim's configuration, found the way the shim finds it, names it.
    for conf in "${KATA_CONF_FILE:-}" /etc/kata-containers/configuration.toml /usr/share/defaults/kata-containers/configuration.toml; do
        [[ -n $conf && -f $conf ]] && break
    done
    [[ -f $conf ]] || die "no kata configuration.toml: run make install and make image (or CRITEST_HANDLERS=runc)"
    for key in kernel initrd; do
        f=$(sed -n "s/^$key *= *\"\(.*\)\"/\1/p" "$conf" | head -1)
        [[ -z $f || -f $f ]] || die "no guest $key $f (named by $conf): run make image (or CRITEST_HANDLERS=runc)"
    done
fi

# One run at a time: the lock is beside W, because W itself is removed at the end.
mkdir -p "$(dirname "$W")"
exec 9>"$W.lock"
flock -n 9 || die "another make critest is running ($W.lock)"
# (The processes started below close fd 9, so that a run killed outright does not keep the
# lock through them, and the next run can clean up after it.)

crio_pid=""
registry_pid=""
critest_pid=""

# Processes of this harness, left behind: their command line or working directory is under W
# (CRI-O, conmon, the registry), or they carry the ID of a pod sandbox this CRI-O made (a kata
# shim, its VM). Matching these, never a program name, keeps other users' processes safe.
our_pids() {
    local ids=() p cmd cwd id
    [[ -f $out/crio.log ]] && mapfile -t ids < <(grep -oE 'Ran pod sandbox [0-9a-f]{64}' "$out/crio.log" | awk '{print $4}' | sort -u)
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        [[ -n $cmd ]] || continue
        cwd=$(readlink "/proc/$p/cwd" 2>/dev/null) || cwd=""
        if [[ $cmd == *"$W/"* || $cwd == "$W" || $cwd == "$W/"* ]]; then
            echo "$p"
            continue
        fi
        for id in "${ids[@]}"; do
            if [[ $cmd == *"$id"* ]]; then
                echo "$p"
                break
            fi
        done
    done
}

# stop PID...: TERM, up to 20 s of grace, then KILL.
stop() {
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$@" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$@" 2>/dev/null || true
}

# Idempotent, and safe after a run that was killed: it is run before starting too.
cleanup() {
    set +e
    local pid pids m leaks
    if [[ -n $critest_pid ]]; then
        stop "$critest_pid"
        wait "$critest_pid" 2>/dev/null
    fi
    if [[ -S $sock ]]; then
        # Pods the suite left (a failed spec's cleanup): removing them through CRI-O lets it stop
        # the kata VMs and release the network namespaces properly.
        timeout 300 "$bin/crictl" -r "unix://$sock" -t 120s rmp -fa >/dev/null 2>&1
    fi
    pid=${crio_pid:-$(cat "$W/crio.pid" 2>/dev/null)}
    [[ -n $pid ]] && grep -qs "$W/" "/proc/$pid/cmdline" && stop "$pid"
    wait "$pid" 2>/dev/null
    pid=${registry_pid:-$(cat "$W/registry.pid" 2>/dev/null)}
    [[ -n $pid ]] && grep -qs "$W/" "/proc/$pid/cmdline" && stop "$pid"
    wait "$pid" 2>/dev/null
    crio_pid="" registry_pid=""
    # Anything still alive was leaked by CRI-O, conmon or the shim: say so, then end it.
    mapfile -t pids < <(our_pids)
    if ((${#pids[@]})); then
        leaks=$(ps -o pid=,args= -p "${pids[@]}" 2>/dev/null)
        if [[ -n $leaks ]]; then
            printf 'critest: left behind, now killed:\n%s\n' "$leaks" >&2
            printf '%s\n' "$leaks" >>"$out/leaks.txt"
        fi
        stop "${pids[@]}"
    fi
    # Innermost mounts first; overlays can be stacked, so go round until none is left.
    for _ in 1 2 3 4 5; do
        mapfile -t pids < <(awk -v w="$W" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
        ((${#pids[@]})) || break
        for m in "${pids[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
    done
    ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
    # CRI-O's hostport manager adds host-wide nat chains when a pod first maps a host port and
    # never removes them: remove them when they were not there before this run.
    if [[ -f $W/hostport-chains ]]; then
        iptables -t nat -D PREROUTING -m comment --comment "kube hostport portals" -m addrtype --dst-type LOCAL -j KUBE-HOSTPORTS
        iptables -t nat -D OUTPUT -m comment --comment "kube hostport portals" -m addrtype --dst-type LOCAL -j KUBE-HOSTPORTS
        iptables -t nat -D POSTROUTING -m comment --comment "kube hostport masquerading" -m conntrack --ctstate DNAT -j CRIO-HOSTPORTS-MASQ
        iptables -t nat -X KUBE-HOSTPORTS
        iptables -t nat -X CRIO-HOSTPORTS-MASQ
    fi >/dev/null 2>&1
    # The host IPC specs make a 1 MiB System V segment on the host with ipcmk and never remove
    # it: remove the unattached 1 MiB segments that appeared during the run and whose creator
    # (ipcmk) is gone.
    if [[ -f $W/shm-before ]]; then
        awk 'NR > 1 && $4 == 1048576 && $7 == 0 { print $2, $5 }' /proc/sysvipc/shm |
            while read -r id cpid; do
                grep -qx "$id" "$W/shm-before" || kill -0 "$cpid" 2>/dev/null || ipcrm -m "$id"
            done
    fi
    # --one-file-system: should a mount have survived, leave what is behind it alone.
    rm -rf --one-file-system "$W"
    return 0
}

cleanup
trap 'cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$W"/{conf.d,cni,ipam,logs,registry,registries.d,tmp} "$out"
rm -f "$out/leaks.txt"
# What this run may leave on the host outside W, noted before it can (see cleanup).
iptables -t nat -S KUBE-HOSTPORTS >/dev/null 2>&1 || touch "$W/hostport-chains"
awk 'NR > 1 { print $2 }' /proc/sysvipc/shm >"$W/shm-before"

# The registry, holding stand-ins for critest's images (see scripts/critest/images.sh).
cat >"$W/registry/config.yml" <<EOF
version: 0.1
storage: { filesystem: { rootdirectory: $W/registry/data }, delete: { enabled: true } }
http: { addr: $registry }
EOF
docker-registry serve "$W/registry/config.yml" >"$out/registry.log" 2>&1 9>&- &
registry_pid=$!
echo "$registry_pid" >"$W/registry.pid"
for _ in $(seq 50); do
    kill -0 "$registry_pid" 2>/dev/null || die "the registry did not start (port ${registry#*:} taken?): see $out/registry.log"
    curl -sf "http://$registry/v2/" >/dev/null && break
    sleep 0.2
done
curl -sf "http://$registry/v2/" >/dev/null || die "the registry did not answer: see $out/registry.log"
"$here/images.sh" "$registry" "$W/tmp/images" >"$out/images.log" 2>&1 ||
    die "building the stand-in images failed: see $out/images.log"

# CRI-O: no default config files are read (every path is given), so the node's own
# /etc/crio never leaks in and the run never touches it.
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$W/policy.json"
cat >"$W/registries.conf" <<EOF
[[registry]]
location = "$registry"
insecure = true
[[registry]]
prefix = "registry.k8s.io"
location = "$registry"
insecure = true
[[registry]]
prefix = "gcr.io/k8s-staging-cri-tools"
location = "$registry/k8s-staging-cri-tools"
insecure = true
EOF
cat >"$W/crio.conf" <<EOF
[crio]
root = "$W/storage"
runroot = "$W/runstorage"
storage_driver = "overlay"
log_dir = "$W/logs"
version_file = "$W/version"
version_file_persist = "$W/version-persist"
clean_shutdown_file = "$W/clean.shutdown"
[crio.api]
listen = "$sock"
[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
conmon = "$(command -v conmon)"
conmon_cgroup = "pod"
pinns_path = "$bin/pinns"
container_exits_dir = "$W/exits"
container_attach_socket_dir = "$W/attach"
namespaces_dir = "$W/ns"
[crio.runtime.runtimes.runc]
runtime_path = "$here/runc-nooomadj"
runtime_type = "oci"
runtime_root = "$W/runc"
[crio.image]
pause_image = "registry.k8s.io/pause:3.10"
pause_command = "/pause"
signature_policy = "$W/policy.json"
[crio.network]
network_dir = "$W/cni"
plugin_dirs = ["/usr/lib/cni"]
[crio.nri]
enable_nri = false
EOF
# Our handler exactly as operators get it, but for the shim path when CRITEST_SHIM is set.
# CRI-O refuses to start with a handler whose binary is missing, hence only when kata runs.
if [[ -n $shim ]]; then
    sed -e "s|^runtime_path *=.*|runtime_path = \"$shim\"|" configs/crio/50-kata >"$kata_conf"
fi
cat >"$W/cni/10-critest.conflist" <<EOF
{ "cniVersion": "1.0.0", "name": "kata-critest",
  "plugins": [ { "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false,
      "ipam": { "type": "host-local", "dataDir": "$W/ipam", "routes": [{ "dst": "0.0.0.0/0" }],
                "ranges": [[{ "subnet": "$subnet" }]] } } ] }
EOF
"$bin/crio" --config "$W/crio.conf" --config-dir "$W/conf.d" \
    --registries-conf "$W/registries.conf" --registries-conf-dir "$W/registries.d" \
    --log-level info >"$out/crio.log" 2>&1 9>&- &
crio_pid=$!
echo "$crio_pid" >"$W/crio.pid"
for _ in $(seq 150); do
    kill -0 "$crio_pid" 2>/dev/null || die "CRI-O exited at start: see $out/crio.log"
    [[ -S $sock ]] && "$bin/crictl" -r "unix://$sock" version >/dev/null 2>&1 && break
    sleep 0.2
done
"$bin/crictl" -r "unix://$sock" version >/dev/null 2>&1 || die "CRI-O did not answer: see $out/crio.log"

meta=(
    # critest reports no version of its own when built from a source archive: the tag is the one
    # build-cri-tools.sh builds.
    "--meta" "critest: cri-tools v1.32.0 (${CRI_TOOLS_BIN:-target/cri-tools}/critest); $("$bin/crio" --version 2>/dev/null | head -1); $(runc --version | head -1)"
    "--meta" "host: $(uname -sr), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
)
[[ -n $shim ]] && meta+=("--meta" "shim: $shim ($(timeout 10 "$shim" --version 2>/dev/null | head -1 || echo 'no --version'))")
meta+=("--meta" "command: CRITEST_HANDLERS=\"${handlers[*]}\"${focus:+ CRITEST_FOCUS=\"$focus\"}${skip:+ CRITEST_SKIP=\"$skip\"}${CRITEST_ARGS:+ CRITEST_ARGS=\"$CRITEST_ARGS\"} make critest")

runs=()
for h in "${handlers[@]}"; do
    mkdir -p "$out/$h"
    rm -f "$out/$h/junit.xml"
    echo "== critest $h (log: ${out#"$root"/}/$h/critest.log)"
    start=$SECONDS
    # runc is CRI-O's default handler: critest then asks for no handler, as kubelet would.
    args=()
    [[ $h == runc ]] || args+=(--runtime-handler "$h")
    [[ -n $focus ]] && args+=("--ginkgo.focus=$focus")
    [[ -n $skip ]] && args+=("--ginkgo.skip=$skip")
    # critest exits non-zero whenever a spec fails, and some always fail on any host here (see
    # known.tsv): the JUnit report, not the exit status, says how the run went.
    "$bin/critest" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
        --runtime-service-timeout 30s "${args[@]}" \
        --ginkgo.no-color --ginkgo.timeout 4h --ginkgo.junit-report "$out/$h/junit.xml" \
        "${extra[@]}" >"$out/$h/critest.log" 2>&1 9>&- &
    # In the background and waited for, so that a TERM to this script runs the cleanup at once
    # rather than after the suite.
    critest_pid=$!
    wait "$critest_pid" || true
    critest_pid=""
    echo "   $h took $((SECONDS - start)) s"
    runs+=("$h=$out/$h/junit.xml")
done

# Stop everything before writing the report, so that a leak shows up in it.
cleanup
[[ -s $out/leaks.txt ]] && meta+=("--meta" "**left behind** (see target/critest/leaks.txt): $(wc -l <"$out/leaks.txt") processes")
partial=()
[[ -n $focus || -n $skip ]] && partial=(--partial)
python3 "$root/scripts/critest-report.py" --out "$report" --known "$here/known.tsv" \
    "${meta[@]}" "${partial[@]}" "${runs[@]}"
