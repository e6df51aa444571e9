package build

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// updatedStamp is the content systemd-update-done writes: the time in the
// file itself too, for filesystems that keep only seconds (squashfs).
const updatedStamp = `# Written by herd's image build, in systemd-update-done's format: the
# image's /etc and /var were made with its /usr (package scripts ran
# ldconfig and the catalog update), so no ConditionNeedsUpdate= unit has
# anything to redo at boot. See man:systemd-update-done.service(8).
TIMESTAMP_NSEC=%d
`

// StampUpdated writes /etc/.updated and /var/.updated into the tree at root,
// dated like its /usr, as systemd-update-done.service would after a first
// boot. A node's root is the image with a fresh tmpfs on top, so without
// them every boot of every node counts as the first after a /usr update
// and reruns ldconfig.service and systemd-journal-catalog-update.service
// (9 s of a 50 s emulated boot, issue 17) to rebuild what the image
// already holds. The times of /, /etc and /var are kept, so the tree's
// other bytes stay as they were.
func StampUpdated(root string) error {
	var usr, top unix.Stat_t
	if err := unix.Lstat(filepath.Join(root, "usr"), &usr); err != nil {
		return fmt.Errorf("update stamps: stat /usr: %w", err)
	}
	// On an overlayfs, a write below / changes the upper's root too.
	if err := unix.Lstat(root, &top); err != nil {
		return fmt.Errorf("update stamps: stat /: %w", err)
	}
	for _, dir := range []string{"etc", "var"} {
		d := filepath.Join(root, dir)
		var st unix.Stat_t
		if err := unix.Lstat(d, &st); err != nil {
			return fmt.Errorf("update stamps: stat /%s: %w", dir, err)
		}
		p := filepath.Join(d, ".updated")
		if err := os.WriteFile(p, []byte(fmt.Sprintf(updatedStamp, usr.Mtim.Nano())), 0o644); err != nil {
			return fmt.Errorf("update stamps: %w", err)
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{usr.Mtim, usr.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("update stamps: date %s: %w", p, err)
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("update stamps: keep the times of /%s: %w", dir, err)
		}
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, root, []unix.Timespec{top.Atim, top.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("update stamps: keep the times of /: %w", err)
	}
	return nil
}

// matchDir gives directory dst the owner, mode and times of src: an
// overlayfs upper's own directory is the merged root, so it must look like
// the layers' root for the tree to be the same bytes with or without it.
func matchDir(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", dst, err)
	}
	if err := unix.Chmod(dst, st.Mode&07777); err != nil {
		return fmt.Errorf("chmod %s: %w", dst, err)
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set the times of %s: %w", dst, err)
	}
	return nil
}
