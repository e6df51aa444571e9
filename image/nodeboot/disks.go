package nodeboot

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Disk is one whole block device seen in /sys/block.
type Disk struct {
	Name    string // kernel name, e.g. nvme0n1
	Dev     string // device node, e.g. /dev/nvme0n1
	Size    int64  // bytes
	Skip    string // why it is not a cache candidate ("" = candidate)
	Content Content
	Err     error // reading the device failed
}

// Disks finds whole disks below sysRoot/block (normally /sys) whose device
// nodes live in devRoot (normally /dev) and inspects each candidate.
// Virtual and removable devices are listed with a Skip reason and never read.
func Disks(sysRoot, devRoot string) ([]Disk, error) {
	ents, err := os.ReadDir(filepath.Join(sysRoot, "block"))
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []Disk
	for _, e := range ents {
		name := e.Name()
		d := Disk{Name: name, Dev: filepath.Join(devRoot, name)}
		dir := filepath.Join(sysRoot, "block", name)
		sectors, _ := strconv.ParseInt(readTrim(filepath.Join(dir, "size")), 10, 64)
		d.Size = sectors * 512 // /sys/block/*/size is always in 512-byte units
		d.Skip = skipReason(dir, name, d.Size)
		if d.Skip == "" {
			d.Content, d.Err = inspectDevice(d.Dev, d.Size)
		}
		out = append(out, d)
	}
	return out, nil
}

const skipVirtual = "virtual or optical device"

func skipReason(dir, name string, size int64) string {
	for _, p := range []string{"loop", "ram", "zram", "sr", "fd", "md", "dm-", "nbd", "mtdblock"} {
		if strings.HasPrefix(name, p) {
			return skipVirtual
		}
	}
	if readTrim(filepath.Join(dir, "removable")) == "1" {
		return "removable"
	}
	if readTrim(filepath.Join(dir, "ro")) == "1" {
		return "read-only"
	}
	// /sys/block/<name> links into /sys/devices; a USB disk's path runs
	// through its USB host controller and ports (.../usb2/2-1/...).
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		for _, part := range strings.Split(real, string(filepath.Separator)) {
			if strings.HasPrefix(part, "usb") {
				return "USB-attached"
			}
		}
	}
	if size < 4*mib {
		return "too small"
	}
	return ""
}

func inspectDevice(dev string, size int64) (Content, error) {
	f, err := os.Open(dev)
	if err != nil {
		return Content{}, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	c, err := Inspect(f, size)
	if err != nil {
		return c, fmt.Errorf("%s: %w", dev, err)
	}
	return c, nil
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Choice is the cache decision: the disk to use (nil = run from RAM), and
// one line per disk explaining why it was or was not taken.
type Choice struct {
	Disk    *Disk
	Prepare bool // the disk is blank and must be partitioned and formatted
	Notes   []string
	// Refused is set when a disk was considered but holds foreign data.
	Refused bool
}

// ChooseAuto applies the `auto` policy: a disk already carrying herd's
// cache partition wins (largest first); otherwise the largest blank
// candidate is prepared; disks holding anything else are never chosen.
func ChooseAuto(disks []Disk) Choice {
	var ch Choice
	var herd, blank []*Disk
	for i := range disks {
		d := &disks[i]
		switch {
		case d.Skip == skipVirtual:
			// loop, ram, optical...: not disks anyone expects herd to use.
		case d.Skip != "":
			ch.Notes = append(ch.Notes, fmt.Sprintf("%s: skipped (%s)", d.Name, d.Skip))
		case d.Err != nil:
			ch.Notes = append(ch.Notes, fmt.Sprintf("%s: skipped (%v)", d.Name, d.Err))
		case d.Content.Herd:
			herd = append(herd, d)
		case d.Content.Blank:
			blank = append(blank, d)
		default:
			ch.Refused = true
			ch.Notes = append(ch.Notes, fmt.Sprintf("%s: not touched, it holds %s", d.Name, d.Content.What))
		}
	}
	bySize := func(s []*Disk) {
		sort.SliceStable(s, func(i, j int) bool { return s[i].Size > s[j].Size })
	}
	bySize(herd)
	bySize(blank)
	switch {
	case len(herd) > 0:
		ch.Disk = herd[0]
		ch.Prepare = !herd[0].Content.HerdFormatted
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s: herd cache disk (%s)", ch.Disk.Name, human(ch.Disk.Size)))
	case len(blank) > 0:
		ch.Disk = blank[0]
		ch.Prepare = true
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s: blank, largest candidate (%s): will become the herd cache", ch.Disk.Name, human(ch.Disk.Size)))
	}
	return ch
}

// ChooseExplicit applies a `/dev/...` policy to one named disk: it gets the
// same check as under auto, so a disk holding data is never written.
func ChooseExplicit(path, sysRoot string) Choice {
	var ch Choice
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s: not found (%v); check herd.cache / the node's cache setting", path, err))
		return ch
	}
	d := Disk{Name: filepath.Base(real), Dev: real}
	size, err := deviceSize(real, sysRoot)
	if err != nil {
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s: %v", path, err))
		return ch
	}
	d.Size = size
	d.Content, err = inspectDevice(real, size)
	switch {
	case err != nil:
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s: %v", path, err))
	case d.Content.Herd:
		ch.Disk, ch.Prepare = &d, !d.Content.HerdFormatted
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s (%s): herd cache disk", path, d.Name))
	case d.Content.Blank:
		ch.Disk, ch.Prepare = &d, true
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s (%s): blank, will become the herd cache", path, d.Name))
	default:
		ch.Refused = true
		ch.Notes = append(ch.Notes, fmt.Sprintf("%s (%s): not touched, it holds %s", path, d.Name, d.Content.What))
	}
	return ch
}

// deviceSize reads a block device's size from sysfs, or a regular file's
// size (for tests that point herd.cache at a disk image).
func deviceSize(dev, sysRoot string) (int64, error) {
	st, err := os.Stat(dev)
	if err != nil {
		return 0, err
	}
	if st.Mode().IsRegular() {
		return st.Size(), nil
	}
	s := readTrim(filepath.Join(sysRoot, "class/block", filepath.Base(dev), "size"))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size of %s unknown (sysfs): %w", dev, err)
	}
	return n * 512, nil
}

func human(n int64) string {
	const g = 1 << 30
	if n >= g {
		return fmt.Sprintf("%.1f GiB", float64(n)/g)
	}
	return fmt.Sprintf("%d MiB", n/mib)
}
