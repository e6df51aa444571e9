#!/usr/bin/env bash
# Delta update benchmark (issue 17): how many bytes a node that caches one
# generation of the default image downloads to boot the next, as a fraction
# of the whole root image (the chunks of the new image's rootfs.index that
# the old one lacks: exactly what image/nodeboot fetches from /chunks/, the
# same figure `herd image diff` prints). Kernel and initrd come on every
# boot and are not counted. Pairs, all against generation N (the recipe as
# it is):
#  (a) the same image: a node that caches it downloads nothing (an
#      unchanged rebuild gives the same image ID: TestPackIsReproducible);
#  (b) one package added (`tree`, the same change as the e2e suite's
#      delta check, so the two share their build);
#  (c) a driver bump: the NVIDIA branch 580 → 595 (the archive holds one
#      version per branch, so the bump is a branch change, with its
#      prebuilt signed modules for the same kernel);
#  (d) an overlay-only change (one NTP server in herd.yaml).
# Builds go to $STATE (default: the shared test store, whose stage cache
# makes repeated runs cheap). Prints BENCH lines; never fails on sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/lock.sh
HERD=${HERD:-bin/herd}
[ -x "$HERD" ] || { echo "build herd first (make build)" >&2; exit 1; }
STATE=${STATE:-/var/tmp/herd-test-store}
DRIVER_BRANCH=${DRIVER_BRANCH:-595}
DRIVER_VERSION=${DRIVER_VERSION:-595.91.07-0ubuntu0.24.04.1}
work=$(mktemp -d /var/tmp/herd-bench-delta.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/recipes"
cp recipes/ubuntu-noble-gpu.yaml "$work/recipes/"
[ -e recipes/ubuntu-noble-gpu.lock ] && cp recipes/ubuntu-noble-gpu.lock "$work/recipes/"
recipe="$work/recipes/ubuntu-noble-gpu.yaml"
cp examples/herd.yaml "$work/herd.yaml"
printf 'ntp: [10.77.0.1]\n' >> "$work/herd.yaml"
sed 's/^ntp: \[10.77.0.1\]$/ntp: [10.77.0.3]/' "$work/herd.yaml" > "$work/herd-ntp.yaml"

build() { # build NAME CONFIG RECIPE [--set ...] -> prints the image ID
	local name=$1 cfg=$2 rcp=$3; shift 3
	local t0=$SECONDS
	bench_build "${rcp%.yaml}.lock" "$work/$name.log" "$HERD" --state "$STATE" --config "$cfg" image build "$rcp" "$@" || { cat "$work/$name.log" >&2; return 1; }
	echo "built $name in $((SECONDS - t0))s: $(grep -o 'stage [a-z]*: [a-z]*' "$work/$name.log" | tr '\n' ' ')" >&2
	awk '/^image /{print $2; exit}' "$work/$name.log"
}
report() { # report NAME BASE-ID NEW-ID [NOTE]
	"$HERD" --state "$STATE" --config /dev/null image diff "$2" "$3" --json > "$work/$1.json"
	python3 - "$1" "$work/$1.json" "${4:-}" <<'PY'
import json, sys
d = json.load(open(sys.argv[2])).get("download")
if not d:
    print(f"{sys.argv[1]}: no chunk index in these images", file=sys.stderr); sys.exit(0)
note = f"; {sys.argv[3]}" if sys.argv[3] else ""
print(f"BENCH delta-{sys.argv[1]}: herd {d['bytes']}B reference(whole-image) {d['image_size']}B ratio {d['fraction']:.4f} ({d['chunks']} chunks{note})")
PY
}
# driver_share IMAGE-ID: the NVIDIA packages' share of the image's installed
# size (dpkg's Installed-Size), the yardstick of goal (c).
driver_share() {
	unsquashfs -cat "$STATE/images/$1/rootfs.squashfs" var/lib/dpkg/status | awk '
		/^Package: / { p = $2 }
		/^Installed-Size: / { t += $2; if (p ~ /nvidia/) d += $2 }
		END { if (t) printf "driver packages %.1f%% of the installed size: goal <= %.3f", 100 * d / t, d / t + 0.05 }'
}

base=$(build base "$work/herd.yaml" "$recipe")
same=$(build same "$work/herd.yaml" "$recipe")
echo "base $base, rebuilt $same"
report same-image "$base" "$same"

plus_recipe="$work/recipes/ubuntu-noble-gpu-plus.yaml"
sed 's/^packages:$/packages:\n  - tree/; s/^name: ubuntu-noble-gpu$/name: ubuntu-noble-gpu-plus/' "$recipe" > "$plus_recipe"
[ -e "$work/recipes/ubuntu-noble-gpu.lock" ] && cp "$work/recipes/ubuntu-noble-gpu.lock" "$work/recipes/ubuntu-noble-gpu-plus.lock"
if plus=$(build plus "$work/herd.yaml" "$plus_recipe"); then
	report one-package "$base" "$plus"
fi

bump_recipe="$work/recipes/ubuntu-noble-gpu-bump.yaml"
sed 's/^name: ubuntu-noble-gpu$/name: ubuntu-noble-gpu-bump/' "$recipe" > "$bump_recipe"
if bump=$(build bump "$work/herd.yaml" "$bump_recipe" --set "nvidia.branch=$DRIVER_BRANCH" --set "nvidia.version=$DRIVER_VERSION"); then
	report driver-bump "$base" "$bump" "$(driver_share "$bump")"
fi

if ovl=$(build overlay "$work/herd-ntp.yaml" "$recipe"); then
	report overlay-only "$base" "$ovl"
fi
