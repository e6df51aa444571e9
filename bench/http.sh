#!/usr/bin/env bash
# HTTP: a 1 GB rootfs artifact downloaded by 8 concurrent curl clients, from
# herd serve (/images/<id>/rootfs.squashfs) and from nginx (nginx-light,
# sendfile on, own temp config), same namespaces. Prints the aggregate rate
# in MB/s and herd/reference ratio (higher is better for herd).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/netns.sh
RUNS=${BENCH_RUNS:-3}
SIZE_MB=${BENCH_HTTP_MB:-1024}
CLIENTS=8
HERD=$(herd_bin)
[ -x "$HERD" ] || { echo "herd binary not found (make build, or set HERD_BIN)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx missing (make deps installs nginx-light)" >&2; exit 1; }

bench_netns
chmod 755 "$BENCH_TMP" # nginx workers run as nobody

# A published image in a bench state dir (layout of HACKING.md).
state="$BENCH_TMP/state"
stage="$BENCH_TMP/stage"
mkdir -p "$stage" "$state/images"
head -c $((SIZE_MB * 1048576)) /dev/urandom >"$stage/rootfs.squashfs"
head -c 65536 /dev/urandom >"$stage/vmlinuz"
head -c 65536 /dev/urandom >"$stage/initrd.img"
declare -A sha size
for a in initrd.img rootfs.squashfs vmlinuz; do
	sha[$a]=$(sha256sum "$stage/$a" | cut -d' ' -f1)
	size[$a]=$(stat -c %s "$stage/$a")
done
# Image ID = first 16 hex of sha256 over "name sha256\n" in name order (manifest.ComputeID).
id=$(printf '%s %s\n' initrd.img "${sha[initrd.img]}" rootfs.squashfs "${sha[rootfs.squashfs]}" vmlinuz "${sha[vmlinuz]}" | sha256sum | cut -c1-16)
cat >"$stage/manifest.json" <<EOF
{"id": "$id", "created": "2026-01-01T00:00:00Z", "recipe": "bench",
 "artifacts": {
  "initrd.img": {"size": ${size[initrd.img]}, "sha256": "${sha[initrd.img]}"},
  "rootfs.squashfs": {"size": ${size[rootfs.squashfs]}, "sha256": "${sha[rootfs.squashfs]}"},
  "vmlinuz": {"size": ${size[vmlinuz]}, "sha256": "${sha[vmlinuz]}"}}}
EOF
mv "$stage" "$state/images/$id"
echo "$id" >"$state/current"

cat >"$BENCH_TMP/herd.yaml" <<EOF
server:
  address: $SRV_IP
  http_port: 18080
dhcp:
  mode: off
overlays: [base]
EOF

# run_clients URL -> seconds for $CLIENTS parallel full downloads (best of $RUNS)
run_clients() {
	local url=$1 best="" t
	for r in $(seq 1 "$RUNS"); do
		t=$(ip netns exec "$CLI_NS" bash -c '
			s=$(date +%s.%N); pids=()
			for i in $(seq 1 '"$CLIENTS"'); do curl -fsS -o /dev/null "'"$url"'" & pids+=($!); done
			for j in "${pids[@]}"; do wait $j || exit 1; done
			e=$(date +%s.%N); awk -v s=$s -v e=$e "BEGIN{printf \"%.3f\", e - s}"')
		echo "  run $r: $t s" >&2
		if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$t; fi
	done
	echo "$best"
}

bench_start "$BENCH_TMP/herd.log" "$HERD" --config "$BENCH_TMP/herd.yaml" --state "$BENCH_TMP/state" serve --tftp-port 16969
bench_wait_tcp 18080
herd_url="http://$SRV_IP:18080/images/$id/rootfs.squashfs"
got=$(ip netns exec "$CLI_NS" curl -fsS "$herd_url" | sha256sum | cut -d' ' -f1)
[ "$got" = "${sha[rootfs.squashfs]}" ] || { echo "herd served wrong bytes" >&2; exit 1; }
echo "herd:" >&2
herd_s=$(run_clients "$herd_url")
bench_stop_all

mkdir -p "$BENCH_TMP/nginx/logs"
cat >"$BENCH_TMP/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $BENCH_TMP/nginx/nginx.pid;
error_log $BENCH_TMP/nginx/logs/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $BENCH_TMP/nginx/body;
  proxy_temp_path $BENCH_TMP/nginx/proxy;
  fastcgi_temp_path $BENCH_TMP/nginx/fastcgi;
  uwsgi_temp_path $BENCH_TMP/nginx/uwsgi;
  scgi_temp_path $BENCH_TMP/nginx/scgi;
  server {
    listen $SRV_IP:18081;
    root $state;
  }
}
EOF
bench_start "$BENCH_TMP/nginx.log" nginx -p "$BENCH_TMP/nginx" -c "$BENCH_TMP/nginx/nginx.conf"
bench_wait_tcp 18081
echo "nginx:" >&2
ref_s=$(run_clients "http://$SRV_IP:18081/images/$id/rootfs.squashfs")
bench_stop_all

total=$((SIZE_MB * CLIENTS))
herd_rate=$(awk -v m="$total" -v s="$herd_s" 'BEGIN{printf "%.0f", m / s}')
ref_rate=$(awk -v m="$total" -v s="$ref_s" 'BEGIN{printf "%.0f", m / s}')
echo "BENCH http-${SIZE_MB}MB-x${CLIENTS}: herd ${herd_rate}MB/s reference(nginx) ${ref_rate}MB/s ratio $(ratio "$herd_rate" "$ref_rate")"
