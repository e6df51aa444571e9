package testlab

import (
	"os"
	"syscall"
)

// statOwner returns the uid and gid of a file.
func statOwner(fi os.FileInfo) [2]int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]int{int(st.Uid), int(st.Gid)}
	}
	return [2]int{-1, -1}
}

// FileOwner returns the uid and gid of path (for checks on the NAS export).
func FileOwner(path string) (uid, gid int, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return -1, -1, err
	}
	o := statOwner(fi)
	return o[0], o[1], nil
}
