package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/testlab"
)

func init() {
	var (
		uefi, noReboot, keep bool
		workDir              string
	)
	cmd := &cobra.Command{
		Use:   "test ID",
		Short: "Boot an image in a throwaway lab (server, NFS + LDAP NAS, QEMU node) and run the node checks",
		Long: `Boots the image on a QEMU node inside a private network namespace, against a
throwaway herd serve and a NAS fixture (nfs-ganesha exporting homes and
Public, slapd with a user created through herd user add), and runs the same
checks as the end-to-end suite: address and hostname, squashfs root, LDAP
user, SSH login, autofs NFS home with fsc, cachefilesd on the SSD, FS-Cache
hits, the pinned NVIDIA driver, timesyncd with the site's NTP servers, no
failed units, node list, and (unless --no-reboot) a reboot served from the SSD
cache. Each check prints PASS or FAIL; the result is recorded so that herd
image promote --require-test can rely on it. The server and nodes use the
reference addresses (10.77.0.0/24); the NAS and LDAP stand where the image was
built to look, read from its autofs maps, sssd.conf, sudoers and timesyncd
drop-ins: addresses (outside the lab subnet as host addresses on the lab's
bridge), export paths, NFS version, LDAP port, base, users and groups OUs, the
DN nodes bind as, the home root, the sudo group and the NTP servers (the lab
serves no NTP: only the node's settings are checked), all only inside the
lab's own namespace. An image whose NAS or LDAP server is a host name, or
whose LDAP uses TLS, cannot be played by the lab and is refused at once with
the reason; an image built without the autofs or ldap overlay is tested
against the reference NAS and LDAP, and the output says which checks will fail
because of that.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := store.Open(globals.state)
			if err != nil {
				return err
			}
			im, err := st.Get(args[0])
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("image test: find the herd binary: %w", err)
			}
			if workDir == "" {
				workDir = "/var/tmp"
			}
			dir, err := os.MkdirTemp(workDir, "herd-image-test-")
			if err != nil {
				return fmt.Errorf("image test: %w", err)
			}
			logPath := filepath.Join(dir, "checks.log")
			logf, err := os.Create(logPath)
			if err != nil {
				return err
			}
			defer logf.Close()
			out := io.MultiWriter(cmd.OutOrStdout(), logf)
			passed, summary := runImageTest(cmd.Context(), out, self, im, dir, uefi, !noReboot)
			rec := store.TestResult{Passed: passed, Summary: summary, Log: logPath}
			if keep || !passed {
				fmt.Fprintf(out, "lab files kept in %s\n", dir)
			} else {
				rec.Log = ""
				os.RemoveAll(dir)
			}
			if err := st.RecordTest(im.ID, rec); err != nil {
				return err
			}
			if !passed {
				return vmExit{1, fmt.Sprintf("image %s failed: %s", im.ID, summary)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "image %s passed: %s\n", im.ID, summary)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&uefi, "uefi", false, "boot the test node with UEFI firmware (OVMF)")
	f.BoolVar(&noReboot, "no-reboot", false, "skip the reboot-from-SSD-cache check")
	f.BoolVar(&keep, "keep", false, "keep the lab's files (logs, serial console, NAS dirs) after a pass")
	f.StringVar(&workDir, "dir", "", "where the throwaway lab's files go (default /var/tmp)")
	imageCmd.AddCommand(cmd)
}

// runImageTest runs the lab and the checks, printing one line per check.
func runImageTest(ctx context.Context, out io.Writer, herd string, im *store.Image, dir string, uefi, reboot bool) (bool, string) {
	start := time.Now()
	total, failed := 0, 0
	report := func(name string, err error) {
		total++
		if err != nil {
			failed++
			fmt.Fprintf(out, "FAIL %-26s %v\n", name, err)
			return
		}
		fmt.Fprintf(out, "PASS %s\n", name)
	}
	summary := func() string {
		return fmt.Sprintf("%d/%d checks passed in %s", total-failed, total, time.Since(start).Round(time.Second))
	}
	fmt.Fprintf(out, "testing image %s in %s\n", im.ID, dir)
	// The lab plays the NAS and directory the image was built for.
	site, notes, err := testlab.SiteFromImage(filepath.Join(im.Dir, manifest.Rootfs))
	report("site-settings", err)
	if err != nil {
		return false, summary()
	}
	for _, n := range notes {
		fmt.Fprintf(out, "note: %s\n", n)
	}
	fmt.Fprintf(out, "lab NAS %s (homes %s at %s, public %s, NFS %s), LDAP ldap://%s:%d/ base %s (users %s, groups %s, nodes bind %s), sudo group %s, NTP %s\n",
		site.NASAddr, site.Homes, site.HomeRoot, site.Public, site.NFSVersion, site.LDAPAddr, site.LDAPPort, site.Base,
		site.UsersOU, site.GroupsOU, bindAs(site.BindDN), site.SudoGroup, site.NTP)
	lab, err := testlab.StartLab(ctx, testlab.LabConfig{Dir: dir, HerdBin: herd, ImageDir: im.Dir, Site: site})
	report("lab-up", err)
	if err != nil {
		return false, summary()
	}
	defer lab.Close()
	pw := make([]byte, 12)
	rand.Read(pw)
	password := hex.EncodeToString(pw)
	uid, gid, err := lab.AddUser(ctx, "alice", password)
	report("ldap-user-created", err)
	if err != nil {
		return false, summary()
	}
	b, err := testlab.BootNode(ctx, lab, "gpu01", uefi, "alice", password, uid, gid)
	if b != nil {
		defer b.VM.Stop()
	}
	report("node-boots", err)
	if err != nil {
		if b != nil {
			fmt.Fprintf(out, "--- serial console (%s) ---\n%s\n", b.VM.SerialPath, b.VM.Console.Tail(40))
		}
		fmt.Fprintf(out, "logs: %s\n", lab.Logs())
		return false, summary()
	}
	for _, c := range testlab.NodeChecks() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		report(c.Name, c.Run(cctx, b))
		cancel()
	}
	if reboot {
		report("reboot-uses-ssd-cache", rebootCheck(ctx, lab, b))
	}
	if failed > 0 {
		fmt.Fprintf(out, "serial console: %s\nlogs: %s\n", b.VM.SerialPath, lab.Logs())
	}
	return failed == 0, summary()
}

// rebootCheck resets the node and verifies it came back without fetching
// the root image again (it must come from the SSD cache).
func rebootCheck(ctx context.Context, lab *testlab.Lab, b *testlab.Booted) error {
	before := len(lab.ServerLogText())
	if err := b.Reboot(ctx); err != nil {
		return err
	}
	if n := testlab.RootfsDownloads(lab.ServerLogText()[before:], lab.ImageID, b.Node.IP); n != 0 {
		return fmt.Errorf("the root image was downloaded again after the reboot (%d requests)", n)
	}
	var errs []string
	for _, c := range testlab.NodeChecks() {
		if c.Name == "root-is-squashfs-overlay" || c.Name == "nothing-failed" {
			if err := c.Run(ctx, b); err != nil {
				errs = append(errs, c.Name+": "+err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("after the reboot: %s", strings.Join(errs, "; "))
	}
	return nil
}

// bindAs names how nodes bind to the directory, for the lab line.
func bindAs(dn string) string {
	if dn == "" {
		return "anonymously"
	}
	return "as " + dn
}
