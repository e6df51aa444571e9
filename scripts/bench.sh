#!/usr/bin/env bash
# Runs every benchmark in bench/ in turn and gathers their BENCH lines.
# Each bench script measures herd and a reference tool side by side on this
# machine and prints `BENCH <name>: herd ... reference(<tool>) ... ratio <x>`.
# Benchmarks report; they never fail on a timing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PATH"
out=${BENCH_OUT:-bench-results.txt}
: > "$out"
: > "$out.log"
status=0
for b in bench/*.sh; do
	[ -e "$b" ] || continue
	if [ -n "${BENCH_ONLY:-}" ] && [[ "$b" != *"$BENCH_ONLY"* ]]; then continue; fi
	echo "== $b"
	bash "$b" 2>&1 | tee -a "$out.log" | tee -a /dev/stderr | grep '^BENCH ' >> "$out"
	rc=("${PIPESTATUS[@]}")
	[ "${rc[3]}" -eq 0 ] || echo "!! $b printed no BENCH line" >&2
	[ "${rc[0]}" -eq 0 ] || { echo "!! $b failed (exit ${rc[0]})" >&2; status=1; }
done
echo
echo "== summary ($out)"
cat "$out"
# Issue 17 side by side, from this one run: the cached reboot against a
# boot of the same image from a local disk (goal: ratio <= 1.15; the CPU
# time line beside it says how much of the gap is the guest's work); the
# fraction of the root image a node caching generation N downloads for (a)
# the same image (goal 0), (b) one package added (< 5 %), (c) a driver bump
# (<= the driver packages' share + 5 %), (d) an overlay change (< 1 %); a
# driver-bump rebuild and a one-package rebuild against a cold build (goal
# for the driver bump: <= 0.25); a no-change rebuild (goal <= 5 s, same ID).
echo
echo "== issue 17: cached reboot / local disk, delta download fractions, rebuilds"
for name in boot-cached-to-login boot-cached-cpu-to-login delta-same-image delta-one-package delta-driver-bump delta-overlay-only \
	build-driver-bump build-one-package build-no-change; do
	grep -E "^BENCH $name:" "$out" || echo "MISSING $name (its bench script printed no line; see $out.log)"
done
exit $status
