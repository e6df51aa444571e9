#!/usr/bin/env bash
# herd image inspect (go-diskfs, no mount) against unsquashfs -cat on the
# same rootfs.squashfs. herd reads os-release through its relative link,
# lists the module trees (modules.dep) and reads nvidia.ko's .modinfo; the
# references do only one part each:
#   inspect_os_release:     unsquashfs -cat usr/lib/os-release
#   inspect_nvidia_version: unsquashfs -cat <nvidia.ko> | grep -a version=
# Image: the newest GPU image in HERD_TEST_STORE (default
# /var/tmp/herd-test-store, filled by the image/build tests), or
# BENCH_INSPECT_IMAGE=path/to/rootfs.squashfs. Lower is better for herd.
set -euo pipefail
cd "$(dirname "$0")/.."
HERD=${HERD_BIN:-$(command -v herd || true)}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.2f", a / b }'; }
[ -x "$HERD" ] || { echo "herd binary not found (make build, or set HERD_BIN)" >&2; exit 1; }
for c in unsquashfs hyperfine python3; do
	command -v "$c" >/dev/null || { echo "$c not installed" >&2; exit 1; }
done
RUNS=${BENCH_INSPECT_RUNS:-20}
IMG=${BENCH_INSPECT_IMAGE:-}
if [ -z "$IMG" ]; then
	STORE=${HERD_TEST_STORE:-/var/tmp/herd-test-store}
	# Newest image whose manifest names an NVIDIA driver, else the newest.
	IMG=$(python3 - "$STORE" <<'PY'
import glob, json, os, sys
best = []
for m in glob.glob(os.path.join(sys.argv[1], "images", "*", "manifest.json")):
    d = json.load(open(m))
    best.append((bool(d.get("nvidia")), d.get("created", ""), os.path.join(os.path.dirname(m), "rootfs.squashfs")))
print(max(best)[2] if best else "")
PY
)
fi
[ -n "$IMG" ] && [ -f "$IMG" ] || { echo "no built image (run the image/build tests or set BENCH_INSPECT_IMAGE)" >&2; exit 1; }
echo "image: $IMG ($(du -h "$IMG" | cut -f1))" >&2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

"$HERD" image inspect --json "$IMG" >"$T/report.json"
cat "$T/report.json" >&2
MOD=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); m=[n for k in r["kernels"] for n in k["nvidia"] if n["version"]]; print(m[0]["path"].lstrip("/") if m else "")' "$T/report.json")

mean_ms() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(" ".join("%.1f" % (x["mean"]*1000) for x in r))' "$1"; }

hyperfine -N -w 3 -r "$RUNS" --export-json "$T/os.json" \
	"$HERD image inspect --json $IMG" \
	"unsquashfs -cat $IMG usr/lib/os-release" >&2
read -r herd_ms ref_ms < <(mean_ms "$T/os.json")
echo "BENCH inspect_os_release: herd ${herd_ms}ms reference(unsquashfs -cat) ${ref_ms}ms ratio $(ratio "$herd_ms" "$ref_ms")"

if [ -n "$MOD" ]; then
	hyperfine -w 2 -r "$RUNS" --export-json "$T/nv.json" \
		"$HERD image inspect --json $IMG" \
		"unsquashfs -cat $IMG $MOD | grep -a -m1 -o 'version=[0-9.]*'" >&2
	read -r herd_ms ref_ms < <(mean_ms "$T/nv.json")
	echo "BENCH inspect_nvidia_version: herd ${herd_ms}ms reference(unsquashfs -cat | grep) ${ref_ms}ms ratio $(ratio "$herd_ms" "$ref_ms")"
else
	echo "no nvidia module in $IMG: inspect_nvidia_version skipped" >&2
fi
