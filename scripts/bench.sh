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
status=0
for b in bench/*.sh; do
	[ -e "$b" ] || continue
	if [ -n "${BENCH_ONLY:-}" ] && [[ "$b" != *"$BENCH_ONLY"* ]]; then continue; fi
	echo "== $b"
	if ! bash "$b" 2>&1 | tee -a "$out.log" | tee /dev/stderr | grep '^BENCH ' >> "$out"; then
		echo "!! $b printed no BENCH line" >&2
	fi
	[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "!! $b failed" >&2; status=1; }
done
echo
echo "== summary ($out)"
cat "$out"
# Boot path v2 (issue 17) side by side: the cached reboot against a boot of
# the same image from a local disk (goal: ratio <= 1.15), and the fraction of
# the root image a node caching generation N downloads for (a) the same
# image, (b) one package added, (c) a driver bump, (d) an overlay change.
echo
echo "== boot path v2: cached reboot / local disk, and delta download fractions"
grep -E '^BENCH (boot-cached-to-login|delta-(same-image|one-package|driver-bump|overlay-only|e2e-one-package)):' "$out" || echo "(bench/boot.sh or bench/delta.sh printed none)"
exit $status
