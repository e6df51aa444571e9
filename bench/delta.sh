#!/usr/bin/env bash
# Delta update benchmark (issue 17): how many bytes a node that caches one
# generation of the default image downloads to boot the next, as a fraction
# of the whole image (chunks of the new image's rootfs.index that the old
# one lacks: exactly what image/nodeboot fetches from /chunks/). Pairs:
# (a) the same recipe rebuilt, (b) one package added (the archive holds one
# version of each package, so a version bump is played by an addition:
# `nano`), (c) a driver bump, simulated as in bench/build.sh by a recipe
# change that reruns the packages stage where the driver is installed (the
# driver files themselves stay the same: this is the rebuild's own churn),
# (d) an overlay-only change (one NTP server in herd.yaml). Builds go to
# $STATE (default: the shared test store, whose stage cache makes them
# cheap). Prints BENCH lines; never fails on sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
HERD=${HERD:-bin/herd}
[ -x "$HERD" ] || { echo "build herd first (make build)" >&2; exit 1; }
STATE=${STATE:-/var/tmp/herd-test-store}
work=$(mktemp -d /var/tmp/herd-bench-delta.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/recipes"
cp recipes/ubuntu-noble-gpu.yaml recipes/ubuntu-noble-gpu.lock "$work/recipes/"
recipe="$work/recipes/ubuntu-noble-gpu.yaml"
cp examples/herd.yaml "$work/herd.yaml"
printf 'ntp: [10.77.0.1]\n' >> "$work/herd.yaml"
sed 's/^ntp: \[10.77.0.1\]$/ntp: [10.77.0.3]/' "$work/herd.yaml" > "$work/herd-ntp.yaml"

build() { # build NAME CONFIG RECIPE [--set ...] -> prints the image ID
	local name=$1 cfg=$2 rcp=$3; shift 3
	"$HERD" --state "$STATE" --config "$cfg" image build "$rcp" "$@" >"$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; exit 1; }
	grep '^  stages:' "$work/$name.log" >&2
	awk '/^image /{print $2; exit}' "$work/$name.log"
}
report() { # report NAME BASE-ID NEW-ID
	"$HERD" --state "$STATE" image diff "$2" "$3" --json > "$work/$1.json"
	python3 - "$1" "$work/$1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2])).get("download")
if not d:
    print(f"{sys.argv[1]}: no chunk index in these images", file=sys.stderr); sys.exit(0)
print(f"BENCH delta-{sys.argv[1]}: herd {d['bytes']}B reference(full image) {d['image_size']}B ratio {d['fraction']:.4f} ({d['chunks']} chunks)")
PY
}

base=$(build base "$work/herd.yaml" "$recipe")
same=$(build same "$work/herd.yaml" "$recipe")
echo "base $base, rebuilt $same"
report same-image "$base" "$same"

plus_recipe="$work/recipes/ubuntu-noble-gpu-plus.yaml"
sed 's/^  - pciutils$/  - pciutils\n  - nano/; s/^name: ubuntu-noble-gpu$/name: ubuntu-noble-gpu-plus/' "$recipe" > "$plus_recipe"
plus=$(build plus "$work/herd.yaml" "$plus_recipe")
report one-package "$base" "$plus"

bump=$(build bump "$work/herd.yaml" "$recipe" --set 'post=["systemctl set-default multi-user.target", "true driver-bump"]')
report driver-bump-simulated "$base" "$bump"

ovl=$(build overlay "$work/herd-ntp.yaml" "$recipe")
report overlay-only "$base" "$ovl"
