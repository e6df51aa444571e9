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
exit $status
