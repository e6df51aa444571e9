#!/usr/bin/env bash
# DHCP: full DORA exchanges per second, measured with perfdhcp (kea) against
# herd serve (dhcp.mode full, unknown: discover, a 241-address range) and
# against dnsmasq (same range, --no-ping so neither server ARP/ICMP-checks),
# each in the same server namespace, perfdhcp in the client namespace acting
# as a relay (giaddr = its own address). Bounded: -n exchanges and -p seconds.
# Prints 4-way exchanges/s and herd/reference ratio (higher is better for herd).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/netns.sh
RATE=${BENCH_DHCP_RATE:-500}      # exchanges/s perfdhcp attempts
COUNT=${BENCH_DHCP_COUNT:-3000}   # exchanges per run
PERIOD=${BENCH_DHCP_PERIOD:-20}   # hard limit, seconds
CLIENTS=${BENCH_DHCP_CLIENTS:-120} # distinct MACs: unknown MACs may hold half the range (herd policy, 121 of 241)
HERD=$(herd_bin)
[ -x "$HERD" ] || { echo "herd binary not found (make build, or set HERD_BIN)" >&2; exit 1; }
command -v perfdhcp >/dev/null || { echo "perfdhcp (package kea-admin) not installed" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "dnsmasq (package dnsmasq-base) not installed" >&2; exit 1; }

bench_netns
IFACE="s$BENCH_TAG"
RANGE_START=10.94.0.10
RANGE_END=10.94.0.250

measure() { # measure NAME -> 4-way exchanges per second
	ip netns exec "$CLI_NS" perfdhcp -4 -l "c$BENCH_TAG" -r "$RATE" -R "$CLIENTS" -n "$COUNT" -p "$PERIOD" \
		"$SRV_IP" >"$BENCH_TMP/$1.out" 2>&1 || true # exit 3 = some drops; judged below
	cat "$BENCH_TMP/$1.out" >&2
	local rate
	rate=$(awk '/^Rate:/ { print $2; exit }' "$BENCH_TMP/$1.out")
	if [ -z "$rate" ]; then
		echo "perfdhcp printed no rate for $1" >&2
		exit 1
	fi
	echo "$rate"
}

# wait_dhcp NAME: bounded warm-up until the server answers one exchange.
wait_dhcp() {
	local i out
	for i in $(seq 1 50); do
		# exit status 3 = some exchanges dropped; the counts decide.
		out=$(ip netns exec "$CLI_NS" perfdhcp -4 -l "c$BENCH_TAG" -r 5 -n 5 -p 3 "$SRV_IP" 2>&1 || true)
		echo "$out" >>"$BENCH_TMP/wait.log"
		if grep -q '^received packets: [1-9]' <<<"$out"; then
			return 0
		fi
		sleep 0.1
	done
	echo "$1 never answered DHCP" >&2; tail -30 "$BENCH_TMP/wait.log" >&2
	exit 1
}

cat >"$BENCH_TMP/herd.yaml" <<EOF
server:
  interface: $IFACE
  address: $SRV_IP
  http_port: 18080
dhcp:
  mode: full
  subnet: 10.94.0.0/24
  unknown: discover
  range_start: $RANGE_START
  range_end: $RANGE_END
  lease_time: 12h
overlays: [base]
EOF
mkdir -p "$BENCH_TMP/state"
# --force: skip the 3.5 s rival probe (the namespace is ours and empty).
bench_start "$BENCH_TMP/herd.log" "$HERD" --config "$BENCH_TMP/herd.yaml" --state "$BENCH_TMP/state" serve --force --tftp-port 16969
wait_dhcp herd || { cat "$BENCH_TMP/herd.log" >&2; exit 1; }
herd_r=$(measure herd)
ip netns exec "$CLI_NS" curl -s "http://$SRV_IP:18080/metrics" | grep '^herd_dhcp' >&2 || true
bench_stop_all

mkdir -p "$BENCH_TMP/dnsmasq"
bench_start "$BENCH_TMP/dnsmasq.log" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root \
	--interface="$IFACE" --bind-interfaces --no-ping --dhcp-range="$RANGE_START,$RANGE_END,12h" \
	--dhcp-leasefile="$BENCH_TMP/dnsmasq/leases" --pid-file="$BENCH_TMP/dnsmasq/pid"
wait_dhcp dnsmasq
ref_r=$(measure dnsmasq)
bench_stop_all

printf 'BENCH dhcp-dora-rate: herd %.1f/s reference(dnsmasq) %.1f/s ratio %s\n' "$herd_r" "$ref_r" "$(ratio "$herd_r" "$ref_r")"
