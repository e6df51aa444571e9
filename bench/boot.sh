#!/usr/bin/env bash
# Boot path benchmark (issue 5): under QEMU (TCG), power-on to login prompt
# for a node's first boot (image downloaded onto a blank virtual SSD), a
# cached reboot (image verified from the SSD, nothing downloaded) and the
# same image booted from a local virtual disk (the reference); and
# MemAvailable after boot with the SSD cache vs in RAM mode (image held in
# tmpfs). The cached and local-disk boots alternate HERD_BENCH_BOOT_ROUNDS
# times (default 3; every local boot from the same disk, its writes thrown
# away) and each side reports its median: one TCG boot varies by a fifth
# on a shared host. The image is HERD_TEST_IMAGE_DIR (vmlinuz, initrd.img,
# rootfs.squashfs), else the current image of $STATE, else the default
# recipe built now by bin/herd with bin/herd-boot into the shared test store
# (its stage cache makes this cheap: the agent's stages and the pack), so
# the bench boots this tree's node code. The VM gets 4 GiB so the default
# image (~900 MiB) also fits in RAM mode. HERD_BENCH_CONSOLE_DIR keeps each
# boot's serial console with host timestamps (where the time goes): the
# probe prints systemd's phases, CPU by cgroup, context switches and forks,
# and with HERD_QEMU_APPEND=profile=2 (extra kernel parameters for every
# boot) the kernel's own profile: its top lines, and all of it as one
# "HERDDIAG profgz" line (sed 's/.*profgz //' | base64 -d | gunzip gives
# readprofile's listing, to compare two boots). At the login prompt the
# host adds QEMU's own translation counts ("HOSTDIAG jit": host code
# generated, translation blocks, blocks invalidated by writes to pages that
# held code): under TCG every distinct piece of code a boot runs is
# translated first, so a side that runs more of it pays there.
# Prints BENCH lines; never fails on timings.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERD_BENCH_BOOT=1
export HERD_BENCH_RECIPE=${HERD_BENCH_RECIPE:-ubuntu-noble-gpu}
export HERD_QEMU_MEM=${HERD_QEMU_MEM:-4096}
# Multi-threaded TCG, as the lab's nodes boot: the tests' default on a QEMU
# before 8.1 is one thread (internal/qemuaccel), 1.4 times slower. A guest that
# oopses there (the stale-code race) fails the bench; run it again.
export HERD_QEMU_ACCEL=${HERD_QEMU_ACCEL:-tcg,thread=multi}
if [ -z "${HERD_TEST_IMAGE_DIR:-}" ] && [ -r "${STATE:-/var/lib/herd}/current" ]; then
	id=$(cat "${STATE:-/var/lib/herd}/current")
	d="${STATE:-/var/lib/herd}/images/$id"
	if [ -e "$d/rootfs.squashfs" ]; then
		export HERD_TEST_IMAGE_DIR="$d"
		echo "boot bench: current image $id"
	fi
fi
if [ -z "${HERD_TEST_IMAGE_DIR:-}" ] && [ -x bin/herd ] && [ -x bin/herd-boot ]; then
	store=${HERD_TEST_STORE:-/var/tmp/herd-test-store}
	work=$(mktemp -d /var/tmp/herd-bench-boot.XXXXXX)
	trap 'rm -rf --one-file-system "$work"' EXIT
	cp "recipes/$HERD_BENCH_RECIPE.yaml" "$work/"
	[ ! -e "recipes/$HERD_BENCH_RECIPE.lock" ] || cp "recipes/$HERD_BENCH_RECIPE.lock" "$work/"
	. bench/lib/lock.sh
	if bench_build "$work/$HERD_BENCH_RECIPE.lock" "$work/build.log" bin/herd --state "$store" --config "$work/none.yaml" image build --agent bin/herd-boot "$work/$HERD_BENCH_RECIPE.yaml"; then
		id=$(awk '/^image /{print $2; exit}' "$work/build.log")
		export HERD_TEST_IMAGE_DIR="$store/images/$id"
		echo "boot bench: $HERD_BENCH_RECIPE image $id (this tree's herd-boot)"
	else
		tail -20 "$work/build.log" >&2
		echo "boot bench: building $HERD_BENCH_RECIPE failed; the test picks its image itself" >&2
	fi
fi
export HERD_BOOT_BIN=${HERD_BOOT_BIN:-$PWD/bin/herd-boot}
go test -count=1 -timeout 60m -run '^TestBootBench$' -v ./image/nodeboot/
