#!/usr/bin/env bash
# Global leak check after the test suite: no VM, helper, state directory,
# share directory or mount of ours may be left anywhere on the host.
set -uo pipefail
fail=0
for pat in 'qemu-system' 'virtiofsd' 'vhost-device-vsock' 'kata-ctl boot-check'; do
    pids=$(pgrep -f -- "$pat" | grep -v "^$$\$" || true)
    if [ -n "$pids" ]; then
        echo "leak: processes matching '$pat':"; ps -o pid,args -p $pids; fail=1
    fi
done
for d in /run/kata /run/kata-containers/shared/sandboxes; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then
        echo "leak: $d is not empty:"; ls -la "$d"; fail=1
    fi
done
if grep -E '/run/kata(-containers)?/' /proc/self/mountinfo; then
    echo "leak: mounts below /run/kata are left"; fail=1
fi
if [ "$fail" = 0 ]; then echo "leak-check: nothing left behind"; fi
exit $fail
