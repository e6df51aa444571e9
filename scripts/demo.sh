#!/usr/bin/env bash
# The README's first command (`make demo`, which installs the Debian packages
# and builds bin/ first): build the default image, then `herd image test` it:
# herd serve with its own DHCP/TFTP/HTTP inside a private network namespace,
# beside a NAS (NFS + LDAP), netboots a QEMU node from it and checks what a lab
# user sees (SSH login, NFS home, FS-Cache, driver, reboot from the SSD cache).
# With HERD_DEMO_CHECKS=0 it instead serves the image with the demo's own
# herd.yaml and netboots a node until the server records it up (no NAS): one
# boot either way, minutes each under software emulation.
#
# Idempotent: the image store in $HERD_DEMO_STATE keeps its stage cache, so a
# second run reuses the build. Everything the script starts it stops again by
# PID, and it deletes the namespace it made, on success, failure or Ctrl-C.
#
# Settings (environment):
#   HERD_DEMO_STATE   image store (default /var/tmp/herd-demo)
#   HERD_DEMO_RECIPE  recipe (default recipes/ubuntu-noble-gpu.yaml)
#   HERD_DEMO_CHECKS  0: a plain netboot instead of `herd image test`
#   HERD_DEMO_UEFI    1 boots the demo node with OVMF instead of SeaBIOS
set -euo pipefail

cd "$(dirname "$0")/.."
HERD=${HERD:-$PWD/bin/herd}
STATE=${HERD_DEMO_STATE:-/var/tmp/herd-demo}
RECIPE=${HERD_DEMO_RECIPE:-recipes/ubuntu-noble-gpu.yaml}
CHECKS=${HERD_DEMO_CHECKS:-1}
NS=herd-demo-$$
WORK=$STATE/demo-run
SERVER_PID=
VM_PID=

START=$SECONDS
say() { printf '\n\033[1m==> [%dm%02ds] %s\033[0m\n' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)) "$*"; }

cleanup() {
	local rc=$?
	if [[ -n $VM_PID ]] && kill -0 "$VM_PID" 2>/dev/null; then
		kill -TERM "$VM_PID" 2>/dev/null || true
		wait "$VM_PID" 2>/dev/null || true
	fi
	if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	ip netns del "$NS" 2>/dev/null || true
	if ((rc != 0)); then
		echo "demo failed (exit $rc); logs in $WORK" >&2
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || { echo "the demo needs root (network namespaces, taps, image builds)" >&2; exit 1; }
[[ -x $HERD ]] || { echo "$HERD is missing: run 'make demo' (it builds bin/ first)" >&2; exit 1; }
mkdir -p "$STATE" "$WORK"

# The reference lab's site config: the image's autofs and LDAP overlays are
# rendered from it, and the demo's server reads it.
cat >"$WORK/herd.yaml" <<EOF
# Written by scripts/demo.sh: the reference lab's addresses, used only
# inside the demo's own network namespace.
server:
  interface: br-herd
  address: 10.77.0.1
  http_port: 8080
dhcp:
  mode: full
  subnet: 10.77.0.0/24
  router: 10.77.0.1
  dns: [10.77.0.1]
  domain: lab.internal
nas:
  address: 10.77.0.2
  homes: /export/homes
  public: /export/Public
ldap:
  uri: ldap://10.77.0.2/
  base: dc=lab,dc=internal
nodes:
  - name: demo1
    mac: "52:54:00:77:00:21"
    ip: 10.77.0.21
EOF

say "building the default image from $RECIPE into $STATE (cached stages are reused)"
# The recipe's lock file is written next to the copy, not into the source tree.
cp "$RECIPE" "$WORK/"
"$HERD" --config "$WORK/herd.yaml" --state "$STATE" image build "$WORK/$(basename "$RECIPE")" 2>&1 | tee "$WORK/build.log"
name=$(basename "$RECIPE" .yaml)
ID=
for d in $(ls -td "$STATE"/images/*/ 2>/dev/null); do
	if grep -q "\"recipe\": *\"$name\"" "$d/manifest.json" 2>/dev/null; then
		ID=$(basename "$d")
		break
	fi
done
[[ -n $ID ]] || { echo "no image of recipe $name in $STATE/images after the build" >&2; exit 1; }
"$HERD" --state "$STATE" image promote "$ID"
say "image $ID is current"

if [[ $CHECKS != 0 ]]; then
	say "herd image test $ID: herd serve (DHCP, TFTP, HTTP) and a NAS (NFS + LDAP) in a throwaway network namespace; a QEMU node netboots, checks as a lab user sees them"
	"$HERD" --state "$STATE" image test "$ID"
	say "done"
	exit 0
fi

say "serving it in network namespace $NS (bridge br-herd, 10.77.0.1, DHCP full)"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br-herd type bridge
ip -n "$NS" link set br-herd type bridge stp_state 0 forward_delay 0
ip -n "$NS" addr add 10.77.0.1/24 dev br-herd
ip -n "$NS" link set br-herd up
ip netns exec "$NS" "$HERD" -v --config "$WORK/herd.yaml" --state "$STATE" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
	ip netns exec "$NS" curl -fs -o /dev/null http://10.77.0.1:8080/metrics && break
	kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
	sleep 0.2
done

uefi=()
[[ ${HERD_DEMO_UEFI:-0} == 1 ]] && uefi=(--uefi)
say "netbooting QEMU node demo1 (software emulation: a few minutes) until the server records it up"
boots() { "$HERD" --config "$WORK/herd.yaml" --state "$STATE" node list --json | grep -o '"boots": [0-9]*' | grep -o '[0-9]*$' || echo 0; }
before=$(boots)
# demo1 proves its identity with a key it makes on its SSD at first boot; the
# demo admits it through an enrollment window (on a real lab: herd node
# approve with the fingerprint its console prints).
"$HERD" --config "$WORK/herd.yaml" --state "$STATE" node enroll demo1 --for 30m
"$HERD" --config "$WORK/herd.yaml" vm run --netns "$NS" --name demo1 --dir "$WORK/vm-demo1" "${uefi[@]}" &
VM_PID=$!
# "up" is posted by herd-up.service in the booted system with its kernel,
# driver and image versions; wait for the server to count one more boot
# (the state, and so the count, persists across demo runs).
up=
for _ in $(seq 1200); do
	kill -0 "$VM_PID" 2>/dev/null || { echo "demo1 stopped before it came up (serial log $WORK/vm-demo1)" >&2; exit 1; }
	if (($(boots) > before)); then
		up=1
		break
	fi
	sleep 1
done
kill -TERM "$VM_PID" 2>/dev/null || true
wait "$VM_PID" 2>/dev/null || true
VM_PID=
[[ -n $up ]] || { echo "demo1 did not report up within 20 minutes (serial log in $WORK/vm-demo1, server log $WORK/server.log)" >&2; exit 1; }
say "demo1 is up; what the server saw:"
"$HERD" --config "$WORK/herd.yaml" --state "$STATE" node list
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
ip netns del "$NS"
say "done"
