#!/usr/bin/env bash
# Boot path benchmark (issue 5): under QEMU (TCG), power-on to login prompt
# for a node's first boot (image downloaded onto a blank virtual SSD), a
# cached reboot (image verified from the SSD, nothing downloaded) and the
# same image booted from a local virtual disk (the reference); and
# MemAvailable after boot with the SSD cache vs in RAM mode (image held in
# tmpfs). The image is HERD_TEST_IMAGE_DIR (vmlinuz, initrd.img,
# rootfs.squashfs), else the current image of $STATE, else the default
# recipe's image in the shared test store (built by image/build with this
# tree's agent), else the minimal fixture the tests build. The VM gets 4 GiB
# so the default image (~830 MiB) also fits in RAM mode.
# Prints BENCH lines; never fails on timings.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERD_BENCH_BOOT=1
export HERD_BENCH_RECIPE=${HERD_BENCH_RECIPE:-ubuntu-noble-gpu}
export HERD_QEMU_MEM=${HERD_QEMU_MEM:-4096}
if [ -z "${HERD_TEST_IMAGE_DIR:-}" ] && [ -r "${STATE:-/var/lib/herd}/current" ]; then
	id=$(cat "${STATE:-/var/lib/herd}/current")
	d="${STATE:-/var/lib/herd}/images/$id"
	if [ -e "$d/rootfs.squashfs" ]; then
		export HERD_TEST_IMAGE_DIR="$d"
		echo "boot bench: current image $id"
	fi
fi
go test -count=1 -timeout 60m -run '^TestBootBench$' -v ./image/nodeboot/
