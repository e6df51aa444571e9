package testlab

import "testing"

func TestFSCacheStatsParse(t *testing.T) {
	// The shape of /proc/fs/fscache/stats on Ubuntu's 6.8 kernel.
	const sample = `Netfs  : DR=0 RA=3 RF=0 WB=0 WBZ=0
Netfs  : BW=0 WT=0 DW=0 WP=0
Netfs  : ZR=0 sh=0 sk=0
FS-Cache statistics
Cookies: n=4 v=1 vcol=0 voom=0
Acquire: n=4 ok=4 oom=0
LRU    : n=0 exp=0 rmv=0 drp=0 at=0
Invals : n=0
Updates: n=0 rsz=0 rsn=0
Relinqs: n=0 rtr=0 drop=0
NoSpace: nwr=0 ncr=0 cull=0
IO     : rd=12 wr=1024 mis=0
RdHelp : RA=3 RP=0 WB=0 WBZ=0 rr=0 sr=0
`
	m := fscacheStats(sample)
	if m["IO.rd"] != 12 || m["IO.wr"] != 1024 || m["Cookies.n"] != 4 || m["Netfs.RA"] != 3 {
		t.Fatalf("parsed %v", m)
	}
}

func TestRootfsDownloadsCountsOnlyThatNode(t *testing.T) {
	log := `level=INFO msg="http request" service=http remote=10.77.0.11 method=GET path=/images/abc/rootfs.squashfs range="" status=200
level=INFO msg="http request" service=http remote=10.77.0.12 method=GET path=/images/abc/rootfs.squashfs range="" status=200
level=INFO msg="http request" service=http remote=10.77.0.11 method=GET path=/images/abc/vmlinuz range="" status=200
level=INFO msg="boot event" service=http node=gpu01 stage=network message="ens2 is up; image http://10.77.0.1:8080/images/abc/rootfs.squashfs" image=abc remote=10.77.0.11
level=INFO msg="http request" service=http remote=10.77.0.11 method=GET path=/images/def/rootfs.squashfs range="" status=200`
	if n := RootfsDownloads(log, "abc", "10.77.0.11"); n != 1 {
		t.Fatalf("got %d", n)
	}
}
