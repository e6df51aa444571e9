#!/usr/bin/env bash
# Boot path benchmark (issue 5): under QEMU (TCG), power-on to login prompt
# for a node's first boot (image downloaded onto a blank virtual SSD), a
# cached reboot (image verified from the SSD, nothing downloaded) and the
# same image booted from a local virtual disk (the reference); and
# MemAvailable after boot with the SSD cache vs in RAM mode (image held in
# tmpfs). The image is HERD_TEST_IMAGE_DIR (vmlinuz, initrd.img,
# rootfs.squashfs — e.g. the default image from the store), else the
# minimal fixture the tests build. Prints BENCH lines; never fails on timings.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERD_BENCH_BOOT=1
if [ -z "${HERD_TEST_IMAGE_DIR:-}" ] && [ -r "${STATE:-/var/lib/herd}/current" ]; then
	id=$(cat "${STATE:-/var/lib/herd}/current")
	d="${STATE:-/var/lib/herd}/images/$id"
	if [ -e "$d/rootfs.squashfs" ]; then
		export HERD_TEST_IMAGE_DIR="$d"
		echo "boot bench: current image $id"
	fi
fi
go test -count=1 -timeout 60m -run '^TestBootBench$' -v ./image/nodeboot/
