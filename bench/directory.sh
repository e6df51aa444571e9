#!/usr/bin/env bash
# Directory: cost of `herd user add` and `herd user list` against a real
# slapd on loopback, next to the plain ldap-utils operation doing the bare
# LDAP work (ldapadd of a ready-made entry, ldapsearch of all accounts).
# herd does more per add (name/group look-ups, the uid counter claim, the
# clash re-check), so the ratio is the price of that safety, not a race.
# Sequential, N users (BENCH_DIR_USERS, default 100). Lower is better.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/netns.sh # only for herd_bin, ratio and the PID/tmp clean-up
N=${BENCH_DIR_USERS:-100}
HERD=$(herd_bin)
[ -x "$HERD" ] || { echo "herd binary not found (make build, or set HERD_BIN)" >&2; exit 1; }
for c in /usr/sbin/slapd /usr/sbin/slapadd ldapadd ldapsearch hyperfine; do
	command -v "$c" >/dev/null || { echo "$c not installed (make deps)" >&2; exit 1; }
done

D=$BENCH_TMP
BASE=dc=bench,dc=test
ADMIN=cn=admin,$BASE
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URI=ldap://127.0.0.1:$PORT
printf '%s' "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" > "$D/admin.secret" # no newline: slappasswd -T hashes the file as is
chmod 600 "$D/admin.secret"
mkdir -p "$D/db"
{
	for s in core cosine inetorgperson nis; do echo "include /etc/ldap/schema/$s.schema"; done
	echo "pidfile $D/slapd.pid"
	echo "modulepath /usr/lib/ldap"
	echo "moduleload back_mdb"
	echo "database mdb"
	echo "maxsize 268435456"
	echo "suffix \"$BASE\""
	echo "rootdn \"$ADMIN\""
	echo "rootpw $(slappasswd -T "$D/admin.secret")"
	echo "directory $D/db"
	echo "index objectClass,uid,uidNumber,gidNumber,cn eq"
} > "$D/slapd.conf"
printf 'dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: bench\no: bench\n\ndn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\ndn: ou=groups,%s\nobjectClass: organizationalUnit\nou: groups\n' \
	"$BASE" "$BASE" "$BASE" > "$D/base.ldif"
slapadd -f "$D/slapd.conf" -l "$D/base.ldif"
/usr/sbin/slapd -f "$D/slapd.conf" -h "$URI/" -d 0 >"$D/slapd.log" 2>&1 &
BENCH_PIDS+=("$!")
for i in $(seq 1 100); do
	ldapsearch -x -H "$URI" -b "$BASE" -s base >/dev/null 2>&1 && break
	sleep 0.1
done

cat > "$D/herd.yaml" <<YAML
dhcp:
  mode: "off"
nas: # only printed in the home-directory instructions, never contacted
  address: 10.77.0.2
  homes: /export/homes
ldap:
  uri: $URI/
  base: $BASE
  admin_dn: $ADMIN
  admin_password_file: $D/admin.secret
YAML
H=("$HERD" --config "$D/herd.yaml" --state "$D/state")
"${H[@]}" group add members >/dev/null

now() { date +%s.%N; }
t0=$(now)
for i in $(seq 1 "$N"); do "${H[@]}" user add --no-password "h$i" >/dev/null; done
t1=$(now)
for i in $(seq 1 "$N"); do
	printf 'dn: uid=r%d,ou=people,%s\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nobjectClass: shadowAccount\nuid: r%d\ncn: r%d\nsn: r%d\nuidNumber: %d\ngidNumber: 10000\nhomeDirectory: /home/r%d\nloginShell: /bin/bash\n' \
		"$i" "$BASE" "$i" "$i" "$i" $((50000 + i)) "$i" | ldapadd -x -H "$URI" -D "$ADMIN" -y "$D/admin.secret" >/dev/null
done
t2=$(now)
herd_ms=$(awk -v a="$t0" -v b="$t1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')
ref_ms=$(awk -v a="$t1" -v b="$t2" -v n="$N" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')
echo "BENCH directory_user_add: herd ${herd_ms}ms reference(ldapadd) ${ref_ms}ms ratio $(ratio "$herd_ms" "$ref_ms")"

hyperfine -N -w 3 -r 20 --export-json "$D/list.json" \
	"${H[*]} user list --json" \
	"ldapsearch -x -LLL -H $URI -b $BASE (objectClass=posixAccount)" >&2
read -r herd_list ref_list < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(" ".join("%.1f" % (x["mean"]*1000) for x in r))' "$D/list.json")
echo "BENCH directory_user_list_$((2 * N))users: herd ${herd_list}ms reference(ldapsearch) ${ref_list}ms ratio $(ratio "$herd_list" "$ref_list")"
