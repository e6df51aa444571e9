package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/sdnotify"
	"github.com/herdlab/herd/power"
	"github.com/herdlab/herd/pxe/server"
	"github.com/herdlab/herd/rollout"
)

// serveDHCP is set by the DHCP wiring (serve_dhcp.go) when pxe/dhcp is built in.
var serveDHCP server.DHCPStarter

func init() {
	var opt server.Options
	var checkTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Netboot the nodes: DHCP (per dhcp.mode), TFTP and HTTP; SIGHUP reloads herd.yaml, SIGTERM drains",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opt.StateDir = globals.state
			opt.ConfigPath = globals.config
			opt.DHCP = serveDHCP
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			opt.Ready = func(httpAddr, tftpAddr string) { notifyReady(ctx, httpAddr, tftpAddr) }
			// The rollout engine answers the nodes' status reports and
			// resumes a rollout a restart interrupted.
			eng, err := rollout.Open(rollout.Options{StateDir: globals.state, Images: store.ReadOnly(globals.state), CheckTimeout: checkTimeout,
				Power: func(node string) (power.Controller, error) {
					cfg, err := loadSiteParts(false, "nodes")
					if err != nil {
						return nil, err
					}
					return power.ForNode(cfg, node)
				}})
			if err != nil {
				return err
			}
			opt.StatusReply = eng.Reply
			go eng.Run(ctx, 5*time.Second)
			err = server.Run(ctx, opt)
			sdnotify.Notify("STOPPING=1")
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opt.Force, "force", false, "start DHCP even if another DHCP server answers on the interface")
	f.StringVar(&opt.User, "user", "", "started as root: become this unprivileged user (owner of the state dir) once the ports are bound")
	f.StringVar(&opt.Listen, "listen", "", "address TFTP and HTTP bind to (default server.address)")
	f.IntVar(&opt.HTTPPort, "http-port", 0, "bind HTTP to this port instead of server.http_port (scripts still name server.http_port)")
	f.IntVar(&opt.TFTPPort, "tftp-port", 69, "TFTP port")
	f.DurationVar(&opt.DrainTimeout, "drain-timeout", 0, "how long SIGTERM waits for transfers in flight (default 30s)")
	f.DurationVar(&checkTimeout, "rollout-check-timeout", 0, "how long a rebooted node's checks may fail before the rollout counts it failed (default 10m; a boot that finished with failed units fails at once)")
	root.AddCommand(cmd)
}

// notifyReady tells systemd (Type=notify) that herd serves, and pets its
// watchdog for as long as the HTTP service answers /healthz.
func notifyReady(ctx context.Context, httpAddr, tftpAddr string) {
	log := slog.Default()
	if _, err := sdnotify.Notify(fmt.Sprintf("READY=1\nSTATUS=serving: http %s, tftp %s", httpAddr, tftpAddr)); err != nil {
		log.Warn("systemd notify", "err", err)
	}
	iv := sdnotify.WatchdogInterval()
	if iv == 0 {
		return
	}
	url := "http://" + net.JoinHostPort(loopbackFor(httpAddr)) + "/healthz"
	go sdnotify.Watchdog(ctx, iv, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := healthClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}, log)
}

// loopbackFor turns a wildcard listen address into one a local client can dial.
func loopbackFor(addr string) (string, string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, ""
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return host, port
}

// healthClient ignores proxy settings: the health check is local.
var healthClient = &http.Client{Transport: &http.Transport{Proxy: nil}}
