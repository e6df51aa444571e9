#!/usr/bin/env bash
# TFTP: one 1 MB file fetched with curl (blksize 1468, as UEFI firmware asks)
# from herd serve and from tftpd-hpa, same namespaces, same client, hyperfine
# runs each. Prints mean seconds per transfer and herd/reference ratio
# (lower is better for herd).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/netns.sh
RUNS=${BENCH_RUNS:-30}
HERD=$(herd_bin)
[ -x "$HERD" ] || { echo "herd binary not found (make build, or set HERD_BIN)" >&2; exit 1; }

bench_netns
root="$BENCH_TMP/tftproot"
mkdir -p "$root"
head -c 1048576 /dev/urandom >"$root/file1m"

# herd: dhcp off, TFTP root = the test dir; an empty state dir is fine.
cat >"$BENCH_TMP/herd.yaml" <<EOF
server:
  address: $SRV_IP
  http_port: 18080
  tftp_root: $root
dhcp:
  mode: off
overlays: [base]
EOF
mkdir -p "$BENCH_TMP/state"
url="tftp://$SRV_IP/file1m"
measure() { # measure NAME -> mean seconds
	ip netns exec "$CLI_NS" hyperfine -N --warmup 2 --runs "$RUNS" --export-csv "$BENCH_TMP/$1.csv" \
		"curl -sS --tftp-blksize 1468 -o /dev/null $url" >&2
	awk -F, 'NR==2 { print $2 }' "$BENCH_TMP/$1.csv"
}
bench_start "$BENCH_TMP/herd.log" "$HERD" --config "$BENCH_TMP/herd.yaml" --state "$BENCH_TMP/state" serve
bench_wait_tcp 18080
# byte check before timing
ip netns exec "$CLI_NS" curl -sS --tftp-blksize 1468 -o "$BENCH_TMP/got" "$url"
cmp "$BENCH_TMP/got" "$root/file1m"
herd_s=$(measure herd)
bench_stop_all

bench_start "$BENCH_TMP/tftpd.log" in.tftpd -L -s "$root" -a "$SRV_IP:69"
for i in $(seq 1 50); do
	ip netns exec "$CLI_NS" curl -s -o /dev/null "$url" && break
	sleep 0.1
done
ref_s=$(measure tftpd)
bench_stop_all

printf 'BENCH tftp-1MB-blksize1468: herd %.4fs reference(tftpd-hpa) %.4fs ratio %s\n' "$herd_s" "$ref_s" "$(ratio "$herd_s" "$ref_s")"
