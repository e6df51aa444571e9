#!/usr/bin/env bash
# Image build benchmark (issues 2 and 3): a cold `herd image build` of the
# default recipe (empty state: no stage cache, no .deb cache) against plain
# mmdebstrap + mksquashfs of the same pinned package set, run side by side on
# this machine; then a driver-bump rebuild and a no-change rebuild, as ratios
# to the cold build. Only one 580 driver version is in the archive, so the
# driver bump is simulated by a recipe change that invalidates the packages
# stage (where the driver is installed) and everything after it — the work a
# real bump does. Then a one-package rebuild: one more package in the
# recipe's packages reruns the packages stage and what follows, never the
# bootstrap (keyed by the base set alone). Prints BENCH lines; never fails
# on timings.
set -euo pipefail
cd "$(dirname "$0")/.."
HERD=${HERD:-bin/herd}
[ -x "$HERD" ] || { echo "build herd first (make build)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/herd-bench-build.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/recipes"
cp recipes/ubuntu-noble-gpu.yaml recipes/ubuntu-noble-gpu.lock "$work/recipes/"
recipe="$work/recipes/ubuntu-noble-gpu.yaml"
state="$work/state"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

build() { # build LOG [--set ...]
	local log=$1; shift
	"$HERD" --state "$state" --config "$work/none.yaml" image build "$recipe" "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}

t0=$(now); build "$work/cold.log"; t1=$(now)
cold=$(secs "$t0" "$t1")
echo "herd cold build: ${cold}s"; grep '^  stages:' "$work/cold.log"

# The reference: the same packages at the same versions (the lock file plus
# the driver), one mmdebstrap run and one mksquashfs, with herd's verified key.
components=$(awk -F'[][]' '/^components:/ { gsub(/ /, "", $2); print $2 }' recipes/ubuntu-noble-gpu.yaml)
pkgs=$(grep -v '^#' recipes/ubuntu-noble-gpu.lock | awk 'NF == 2 { printf "%s%s=%s", sep, $1, $2; sep="," }')
t0=$(now)
mmdebstrap --variant=minbase --keyring="$(ls "$state"/keyrings/*.gpg | head -1)" \
	--components="$components" --include="$pkgs" noble "$work/ref-root" >"$work/ref.log" 2>&1 \
	|| { tail -20 "$work/ref.log" >&2; exit 1; }
mksquashfs "$work/ref-root" "$work/ref.squashfs" -comp zstd -Xcompression-level 3 -noappend -no-progress >>"$work/ref.log" 2>&1
t1=$(now)
ref=$(secs "$t0" "$t1")
rm -rf --one-file-system "$work/ref-root"
echo "reference mmdebstrap+mksquashfs: ${ref}s"
echo "BENCH build-cold: herd ${cold}s reference(mmdebstrap+mksquashfs) ${ref}s ratio $(ratio "$cold" "$ref")"

t0=$(now)
build "$work/bump.log" --set 'post=["systemctl set-default multi-user.target", "true driver-bump"]'
t1=$(now)
bump=$(secs "$t0" "$t1")
grep '^  stages:' "$work/bump.log"
echo "BENCH build-driver-bump: herd ${bump}s reference(herd cold build) ${cold}s ratio $(ratio "$bump" "$cold")"

# One more package (jq: small, in main, not in the default image) in the
# recipe's packages; the lock keeps every other version.
awk '{ print } /^packages:/ { print "  - jq"; added = 1 } END { if (!added) print "packages: [jq]" }' \
	"$recipe" >"$work/recipes/plus.yaml"
t0=$(now)
"$HERD" --state "$state" --config "$work/none.yaml" image build "$work/recipes/plus.yaml" >"$work/plus.log" 2>&1 || { cat "$work/plus.log" >&2; exit 1; }
t1=$(now)
plus=$(secs "$t0" "$t1")
grep '^  stages:' "$work/plus.log"
echo "BENCH build-one-package: herd ${plus}s reference(herd cold build) ${cold}s ratio $(ratio "$plus" "$cold")"

t0=$(now); build "$work/same.log"; t1=$(now)
same=$(secs "$t0" "$t1")
grep '^  stages:' "$work/same.log"
id_cold=$(awk '/^image /{print $2; exit}' "$work/cold.log")
id_same=$(awk '/^image /{print $2; exit}' "$work/same.log")
echo "no-change rebuild: image $id_same (cold build: $id_cold)"
echo "BENCH build-no-change: herd ${same}s reference(herd cold build) ${cold}s ratio $(ratio "$same" "$cold")"
