# Shared set-up (in a subfolder so scripts/bench.sh does not run it) for bench/tftp.sh and bench/http.sh (sourced, not run):
# two network namespaces joined by a veth pair — the server side at
# 10.94.0.1, the client side at 10.94.0.2 — so herd and the reference tool
# are measured over the same link. Everything started is tracked by PID and
# stopped, and both namespaces deleted, on exit. No traffic leaves them.

BENCH_TAG="hb$$"
SRV_NS="herd-bench-srv-$$"
CLI_NS="herd-bench-cli-$$"
SRV_IP=10.94.0.1
CLI_IP=10.94.0.2
BENCH_PIDS=()
BENCH_TMP=$(mktemp -d /var/tmp/herd-bench.XXXXXX)

bench_cleanup() {
	local p
	for p in "${BENCH_PIDS[@]}"; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	ip netns del "$SRV_NS" 2>/dev/null || true # errexit holds in the trap too: a bench without namespaces must not exit 1 here
	ip netns del "$CLI_NS" 2>/dev/null || true
	rm -rf "$BENCH_TMP"
}
trap bench_cleanup EXIT

bench_netns() {
	ip netns add "$SRV_NS"
	ip netns add "$CLI_NS"
	ip -n "$SRV_NS" link set lo up
	ip -n "$CLI_NS" link set lo up
	ip -n "$SRV_NS" link add "s$BENCH_TAG" type veth peer name "c$BENCH_TAG" netns "$CLI_NS"
	ip -n "$SRV_NS" addr add "$SRV_IP/24" dev "s$BENCH_TAG"
	ip -n "$CLI_NS" addr add "$CLI_IP/24" dev "c$BENCH_TAG"
	ip -n "$SRV_NS" link set "s$BENCH_TAG" up
	ip -n "$CLI_NS" link set "c$BENCH_TAG" up
}

# bench_start LOG CMD... starts CMD in the server namespace, records its PID.
bench_start() {
	local log=$1
	shift
	ip netns exec "$SRV_NS" "$@" >"$log" 2>&1 &
	BENCH_PIDS+=("$!")
}

# bench_stop_all stops everything started so far (between herd and the reference).
bench_stop_all() {
	local p
	for p in "${BENCH_PIDS[@]}"; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	BENCH_PIDS=()
}

# bench_wait_tcp PORT waits (bounded) until the server namespace listens on PORT.
bench_wait_tcp() {
	local i
	for i in $(seq 1 100); do
		ip netns exec "$CLI_NS" curl -s -o /dev/null "http://$SRV_IP:$1/" && return 0
		sleep 0.1
	done
	echo "nothing listens on $SRV_IP:$1" >&2
	return 1
}

herd_bin() {
	if [ -n "${HERD_BIN:-}" ]; then echo "$HERD_BIN"; else command -v herd; fi
}

# ratio A B prints A/B with 2 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.2f", a / b }'; }
