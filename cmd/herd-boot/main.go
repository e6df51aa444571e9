// Command herd-boot is herd's node agent. In the initramfs (`herd-boot
// mountroot ROOTMNT`, run by the boot=herd script) it finds or fetches the
// verified root image and mounts it at ROOTMNT; in the booted system
// (`herd-boot report-up`, run by herd-up.service) it reports that the node
// is up, and `herd-boot status` (herd-status.service) reports its users,
// GPUs and health every minute. It is built static (CGO_ENABLED=0) so it runs in any initramfs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/herdlab/herd/image/nodeboot"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage:
  herd-boot mountroot ROOTMNT   mount the node's root image at ROOTMNT (initramfs)
  herd-boot report-up           post stage "up" once the system has started
  herd-boot verity-watch        report and drop the cached image when dm-verity finds a bad block
  herd-boot status [--once]     post signed status reports (sessions, GPUs, health) every minute
  herd-boot version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "mountroot":
		if len(os.Args) != 3 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		err = nodeboot.Mountroot(ctx, nodeboot.DefaultSystem(), os.Args[2])
	case "report-up":
		err = nodeboot.ReportUp(ctx, nodeboot.DefaultSystem())
	case "status":
		once := len(os.Args) == 3 && os.Args[2] == "--once"
		if len(os.Args) > 3 || (len(os.Args) == 3 && !once) {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		err = nodeboot.RunStatus(ctx, nodeboot.DefaultSystem(), once)
	case "verity-watch":
		err = nodeboot.DefaultVerityWatch(ctx)
	case "version":
		fmt.Println(version)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "herd-boot:", err)
		os.Exit(1)
	}
}
