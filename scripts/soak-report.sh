#!/usr/bin/env bash
# Puts a report of `make soak` ($1: the soak's table from tests/soak.rs, or
# the fault matrix's from tests/fault_matrix.rs) into RELIABILITY.md ($2)
# between the lines `<!-- $3-begin -->` and `<!-- $3-end -->`, with the
# date, the commit and the QEMU the run used. Run after a run that passed
# or failed alike: a failed run's figures are the ones to look at.
set -euo pipefail
report=$1 doc=$2 marker=$3
[ -s "$report" ] || { echo "soak-report: no report at $report (the run did not finish)" >&2; exit 1; }
grep -q "^<!-- $marker-begin -->\$" "$doc" && grep -q "^<!-- $marker-end -->\$" "$doc" || {
    echo "soak-report: $doc lacks the <!-- $marker-begin --> and <!-- $marker-end --> lines" >&2; exit 1; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit plus uncommitted changes"; fi
qemu=$(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo "QEMU unknown")
# As the shim decides (vm/accel.rs): KVM needs the CPU flag and a usable /dev/kvm.
accel=TCG
if grep -qE "^flags.*\b(vmx|svm)\b" /proc/cpuinfo && [ -w /dev/kvm ]; then accel=KVM; fi
body=$(mktemp)
{
    echo "<!-- $marker-begin -->"
    echo "Last \`make soak\`: $(date -u '+%Y-%m-%d %H:%M') UTC on commit $commit; $qemu under $accel."
    echo
    cat "$report"
    echo "<!-- $marker-end -->"
} > "$body"
awk -v body="$body" -v begin="<!-- $marker-begin -->" -v end="<!-- $marker-end -->" '
    $0 == begin { while ((getline line < body) > 0) print line; skip = 1; next }
    $0 == end { skip = 0; next }
    !skip { print }
' "$doc" > "$doc.new"
mv "$doc.new" "$doc"
rm -f "$body"
echo "soak-report: the $marker section of $doc is updated from $report"
