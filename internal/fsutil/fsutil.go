// Package fsutil holds file-system helpers shared by the image builder and
// the image store.
package fsutil

import (
	"fmt"
	"os/exec"
	"strings"
)

// RemoveTree deletes a tree without crossing into other file systems, so a
// killed build's leftovers never take a still-mounted file system with them.
func RemoveTree(p string) error {
	out, err := exec.Command("rm", "-rf", "--one-file-system", "--", p).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rm %s: %v: %s", p, err, strings.TrimSpace(string(out)))
	}
	return nil
}
