#!/usr/bin/env bash
# Puts the soak's report ($1, written by tests/soak.rs) into RELIABILITY.md
# ($2) between its soak markers, with the date, the commit and the QEMU the
# run used. Run by `make soak` after a run that passed or failed alike: a
# failed run's figures are the ones to look at.
set -euo pipefail
report=$1 doc=$2
[ -s "$report" ] || { echo "soak-report: no report at $report (the soak did not finish)" >&2; exit 1; }
grep -q '^<!-- soak-begin -->$' "$doc" && grep -q '^<!-- soak-end -->$' "$doc" || {
    echo "soak-report: $doc lacks the <!-- soak-begin --> and <!-- soak-end --> lines" >&2; exit 1; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit plus uncommitted changes"; fi
qemu=$(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo "QEMU unknown")
body=$(mktemp)
{
    echo "<!-- soak-begin -->"
    echo "Last \`make soak\`: $(date -u '+%Y-%m-%d %H:%M') UTC on commit $commit; $qemu under $(if [ -w /dev/kvm ]; then echo KVM; else echo TCG; fi)."
    echo
    cat "$report"
    echo "<!-- soak-end -->"
} > "$body"
awk -v body="$body" '
    /^<!-- soak-begin -->$/ { while ((getline line < body) > 0) print line; skip = 1; next }
    /^<!-- soak-end -->$/ { skip = 0; next }
    !skip { print }
' "$doc" > "$doc.new"
mv "$doc.new" "$doc"
rm -f "$body"
echo "soak-report: $doc updated from $report"
