#!/usr/bin/env bash
# Image build benchmark (issues 2, 3, 17 and 22): a cold `herd image build`
# of the default recipe (empty state: no stage cache, no .deb cache) against
# plain mmdebstrap + mksquashfs of the same pinned package set, run side by
# side on this machine; then, as ratios to the cold build, in the same run:
# - a driver bump: only one 580 driver version is in the archive, so it is
#   simulated by `--rerun driver`, which rebuilds the driver stage and every
#   stage built on it (join, pack) — exactly what a new nvidia.version
#   reruns (its keys cover only the driver pins); the new driver's download
#   is not counted;
# - a one-package rebuild: one more package in the recipe's packages reruns
#   the packages stage, the join and the pack (never the bootstrap, the
#   driver or the initramfs);
# - a no-change rebuild (same image ID).
# BENCH_RECIPE=test-noble-minimal measures the small CI recipe instead (no
# driver: no driver-bump line). Prints BENCH lines; never fails on timings.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/lock.sh
HERD=${HERD:-bin/herd}
[ -x "$HERD" ] || { echo "build herd first (make build)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/herd-bench-build.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/recipes"
name=${BENCH_RECIPE:-ubuntu-noble-gpu}
cp "recipes/$name.yaml" "$work/recipes/"
[ ! -e "recipes/$name.lock" ] || cp "recipes/$name.lock" "$work/recipes/"
recipe="$work/recipes/$name.yaml"
echo "recipe: $name"
state="$work/state"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

build() { # build LOG [--set ...]
	local log=$1; shift
	bench_build "$work/recipes/$name.lock" "$log" "$HERD" --state "$state" --config "$work/none.yaml" image build "$recipe" "$@" || { cat "$log" >&2; exit 1; }
}

t0=$(now); build "$work/cold.log"; t1=$(now)
cold=$(secs "$t0" "$t1")
echo "herd cold build: ${cold}s"; grep '^  stages:' "$work/cold.log"

# The reference: the same packages at the same versions (the lock file plus
# the driver), one mmdebstrap run and one mksquashfs, with herd's verified key.
components=$(awk -F'[][]' '/^components:/ { gsub(/ /, "", $2); print $2 }' "$recipe")
pkgs=$(grep -v '^#' "$work/recipes/$name.lock" | grep -v -e '^shim-signed ' -e '^grub-efi-amd64-signed ' | awk 'NF == 2 { printf "%s%s=%s", sep, $1, $2; sep="," }')
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

# The same recipe again, right after the cold build: every stage cached,
# the same image ID.
t0=$(now); build "$work/same.log"; t1=$(now)
same=$(secs "$t0" "$t1")
grep '^  stages:' "$work/same.log"
id_cold=$(awk '/^image /{print $2; exit}' "$work/cold.log")
id_same=$(awk '/^image /{print $2; exit}' "$work/same.log")
echo "no-change rebuild: image $id_same (cold build: $id_cold)"
sameid=no; [ "$id_same" != "$id_cold" ] || sameid=yes
echo "BENCH build-no-change: herd ${same}s reference(herd cold build) ${cold}s ratio $(ratio "$same" "$cold") (same image ID: $sameid; goal <= 5 s)"

if grep -q '^nvidia:' "$recipe"; then
	t0=$(now)
	build "$work/bump.log" --rerun driver
	t1=$(now)
	bump=$(secs "$t0" "$t1")
	grep '^  stages:' "$work/bump.log"
	echo "BENCH build-driver-bump: herd ${bump}s reference(herd cold build) ${cold}s ratio $(ratio "$bump" "$cold") (goal <= 0.25)"
fi

# One more package (jq: small, in main, not in the default image) in the
# recipe's packages; the lock keeps every other version.
awk '{ print } /^packages:/ { print "  - jq"; added = 1 } END { if (!added) print "packages: [jq]" }' \
	"$recipe" >"$work/recipes/plus.yaml"
t0=$(now)
cp "$work/recipes/$name.lock" "$work/recipes/plus.lock" 2>/dev/null || true
sed -i "s/^name: .*/name: plus/" "$work/recipes/plus.yaml"
"$HERD" --state "$state" --config "$work/none.yaml" image build "$work/recipes/plus.yaml" >"$work/plus.log" 2>&1 || { cat "$work/plus.log" >&2; exit 1; }
t1=$(now)
plus=$(secs "$t0" "$t1")
grep '^  stages:' "$work/plus.log"
echo "BENCH build-one-package: herd ${plus}s reference(herd cold build) ${cold}s ratio $(ratio "$plus" "$cold")"

