#!/bin/sh
# herd: local accounts, set on every boot (the root file system is RAM, so
# /etc/passwd and /etc/shadow start from the image each time).
#  - herdadmin (uid 990): works when the NAS and LDAP are down.
#    Its home is /var/lib/herd-admin on the image, because /home is autofs'd
#    from the NAS.
#  - root: locked (no password).
set -eu
user='herdadmin'
uid=990
# Look only at the local files: getent would ask SSSD (LDAP) too.
owner=$(awk -F: -v u="$uid" '$3 == u { print $1 }' /etc/passwd)
if [ -n "$owner" ] && [ "$owner" != "$user" ]; then
	echo "herd-accounts: uid $uid is already used by $owner in the image; set admin.uid in herd.yaml" >&2
	exit 1
fi
if [ -z "$owner" ]; then
	if ! grep -q "^$user:" /etc/group; then
		if awk -F: -v g="$uid" '$3 == g { found = 1 } END { exit !found }' /etc/group; then
			groupadd "$user"
		else
			groupadd -g "$uid" "$user"
		fi
	fi
	useradd -u "$uid" -g "$user" -d /var/lib/herd-admin -M -s /bin/bash -c 'herd local admin' "$user"
fi
# No password: '*' (not '!') so that key logins are not refused as locked.
usermod -p '*' "$user"
usermod -p '!*' root
