#!/usr/bin/env bash
# Boot storm: N simulated nodes boot at once against herd serve (DHCP full,
# TFTP, HTTP) and against dnsmasq (DHCP + TFTP) plus nginx (HTTP), same
# namespaces, same clients. A boot is: one DHCP exchange (DISCOVER, OFFER,
# REQUEST, ACK), the first stage (undionly.kpxe over TFTP, blksize 1468),
# then the iPXE script and the kernel over HTTP. The DHCP phase is one
# perfdhcp run for all N MACs (perfdhcp as a relay binds port 67, so one
# instance speaks for every node; it waits 2 s (-W) for late replies, the
# same for both servers); then the N nodes fetch in parallel, each from an
# address of its own.
# Prints completed boots per second and herd/reference ratio (higher is
# better for herd). Every node must complete; a failed fetch fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/netns.sh
N=${BENCH_STORM_NODES:-50}
KERNEL_MB=${BENCH_STORM_KERNEL_MB:-8}
HERD=$(herd_bin)
[ -x "$HERD" ] || { echo "herd binary not found (make build, or set HERD_BIN)" >&2; exit 1; }
for c in perfdhcp dnsmasq nginx curl; do
	command -v $c >/dev/null || { echo "$c missing (make deps)" >&2; exit 1; }
done
[ -f /usr/lib/ipxe/undionly.kpxe ] || { echo "/usr/lib/ipxe/undionly.kpxe missing (package ipxe)" >&2; exit 1; }

bench_netns
chmod 755 "$BENCH_TMP"
IFACE="s$BENCH_TAG"
RANGE_START=10.94.0.10
RANGE_END=10.94.0.250

# A published image (layout of HACKING.md), a TFTP root with the iPXE binary.
state="$BENCH_TMP/state"
stage="$BENCH_TMP/stage"
tftproot="$BENCH_TMP/tftp"
mkdir -p "$stage" "$state/images" "$tftproot"
cp /usr/lib/ipxe/undionly.kpxe "$tftproot/"
chmod -R a+rX "$tftproot"
head -c $((KERNEL_MB * 1048576)) /dev/urandom >"$stage/vmlinuz"
head -c 65536 /dev/urandom >"$stage/initrd.img"
head -c 65536 /dev/urandom >"$stage/rootfs.squashfs"
declare -A sha size
for a in initrd.img rootfs.squashfs vmlinuz; do
	sha[$a]=$(sha256sum "$stage/$a" | cut -d' ' -f1)
	size[$a]=$(stat -c %s "$stage/$a")
done
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
chmod -R a+rX "$state"
# Each node fetches from an address of its own (as real nodes do): the
# client side gets 10.94.1.i and 10.94.2.i ... one per node.
macs=()
nodes=()
for i in $(seq 1 "$N"); do
	macs+=("$(printf '02:42:00:00:%02x:%02x' $((i / 256)) $((i % 256)))")
	a="10.94.$((1 + i / 250)).$((1 + i % 250))"
	ip -n "$CLI_NS" addr add "$a/32" dev "c$BENCH_TAG"
	ip -n "$SRV_NS" route add "$a/32" dev "$IFACE" 2>/dev/null || true
	nodes+=("${macs[-1]}=$a")
done

# storm HTTPPORT -> seconds for the DHCP phase plus N parallel node fetches.
storm() {
	local port=$1
	ip netns exec "$CLI_NS" bash -c '
		set -u
		s=$(date +%s.%N)
		out=$(perfdhcp -4 -l '"$CLI_IP"' -r 1000 -R '"$N"' -n '"$N"' -p 30 -W 2000000 -b mac=02:42:00:00:00:01 '"$SRV_IP"' 2>&1) || true
		drops=$(awk "/^drops:/ { s += \$2 } END { print s + 0 }" <<<"$out")
		acks=$(awk "/REQUEST-ACK/ { f = 1 } f && /^received packets:/ { print \$3; exit }" <<<"$out")
		if [ "$drops" != 0 ] || [ "${acks:-0}" -lt '"$N"' ]; then echo "DHCP: $drops dropped, ${acks:-0} ACKs for '"$N"' nodes" >&2; echo "$out" >&2; exit 1; fi
		m=$(date +%s.%N); awk -v s=$s -v e=$m "BEGIN{printf \"  DHCP phase %.3f s\n\", e - s}" >&2
		pids=()
		for node in '"${nodes[*]}"'; do
			mac=${node%%=*} a=${node#*=}
			( curl -fsS --interface $a --tftp-blksize 1468 -o /dev/null "tftp://'"$SRV_IP"'/undionly.kpxe" &&
			  curl -fsS --interface $a -o /dev/null "http://'"$SRV_IP"':'"$port"'/boot/$mac.ipxe" &&
			  curl -fsS --interface $a -o /dev/null "http://'"$SRV_IP"':'"$port"'/images/'"$id"'/vmlinuz" ) & pids+=($!)
		done
		for p in "${pids[@]}"; do wait $p || { echo "a node failed to boot" >&2; exit 1; }; done
		e=$(date +%s.%N); awk -v s=$s -v e=$e "BEGIN{printf \"%.3f\", e - s}"'
}

cat >"$BENCH_TMP/herd.yaml" <<EOF
server:
  interface: $IFACE
  address: $SRV_IP
  http_port: 18080
  tftp_root: $tftproot
dhcp:
  mode: full
  subnet: 10.94.0.0/24
  unknown: discover
  range_start: $RANGE_START
  range_end: $RANGE_END
  lease_time: 12h
overlays: [base]
EOF
bench_start "$BENCH_TMP/herd.log" "$HERD" --config "$BENCH_TMP/herd.yaml" --state "$state" serve --force
bench_wait_tcp 18080
echo "herd:" >&2
herd_s=$(storm 18080) || { tail -30 "$BENCH_TMP/herd.log" >&2; exit 1; }
echo "  $herd_s s" >&2
bench_stop_all

# Reference: dnsmasq gives leases and the first stage, nginx the script
# (one static file per MAC) and the kernel.
mkdir -p "$BENCH_TMP/dnsmasq" "$BENCH_TMP/nginx/logs" "$state/boot"
for mac in "${macs[@]}"; do
	printf '#!ipxe\nkernel http://%s:18081/images/%s/vmlinuz\nboot\n' "$SRV_IP" "$id" >"$state/boot/$mac.ipxe"
done
chmod -R a+rX "$state"
bench_start "$BENCH_TMP/dnsmasq.log" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root \
	--interface="$IFACE" --bind-interfaces --no-ping --dhcp-range="$RANGE_START,$RANGE_END,12h" \
	--dhcp-leasefile="$BENCH_TMP/dnsmasq/leases" --pid-file="$BENCH_TMP/dnsmasq/pid" \
	--enable-tftp --tftp-root="$tftproot"
cat >"$BENCH_TMP/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $BENCH_TMP/nginx/nginx.pid;
error_log $BENCH_TMP/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
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
sleep 1 # dnsmasq binds its DHCP socket
echo "dnsmasq + nginx:" >&2
ref_s=$(storm 18081) || { tail -30 "$BENCH_TMP/dnsmasq.log" >&2; exit 1; }
echo "  $ref_s s" >&2
bench_stop_all

herd_r=$(awk -v n="$N" -v s="$herd_s" 'BEGIN{printf "%.1f", n / s}')
ref_r=$(awk -v n="$N" -v s="$ref_s" 'BEGIN{printf "%.1f", n / s}')
echo "BENCH boot-storm-${N}-nodes: herd ${herd_r}boots/s reference(dnsmasq+nginx) ${ref_r}boots/s ratio $(ratio "$herd_r" "$ref_r")"
