#!/usr/bin/env bash
# Runs one named phase of the build and prints how long it took; the line is
# also appended to target/phases.txt so .ci/run can print a summary.
set -uo pipefail
name=$1; shift
start=$(date +%s.%N)
echo "== phase $name: $*"
"$@"
rc=$?
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
mkdir -p target
printf '%-12s %8ss  exit %s\n' "$name" "$secs" "$rc" | tee -a target/phases.txt
exit $rc
