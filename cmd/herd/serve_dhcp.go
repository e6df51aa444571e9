package main

import (
	"context"
	"net"
	"time"

	"github.com/herdlab/herd/pxe/dhcp"
	"github.com/herdlab/herd/pxe/server"
	"github.com/herdlab/herd/site"
)

// dhcpService adapts *dhcp.Server to server.DHCP.
type dhcpService struct{ *dhcp.Server }

func (d dhcpService) SetConfig(cfg *site.Config) error { return d.Reload(cfg) }

func init() {
	serveDHCP = func(ctx context.Context, cfg *site.Config, env server.DHCPEnv) (server.DHCP, error) {
		s, err := dhcp.New(cfg, dhcp.Options{
			StateDir: env.StateDir, Force: env.Force, Log: env.Log, Registry: env.Registry,
			OnLease: func(mac net.HardwareAddr, ip net.IP, hostname string) {
				if env.Seen == nil {
					return
				}
				addr := ""
				if ip != nil {
					addr = ip.String()
				}
				env.Seen(mac.String(), hostname, addr)
			},
		})
		if err != nil {
			return nil, err
		}
		if err := s.Listen(ctx); err != nil {
			return nil, err
		}
		go func() {
			if err := s.Serve(ctx); err != nil {
				env.Log.Error("dhcp stopped", "err", err)
				if env.Failed != nil {
					env.Failed(err)
				}
			}
		}()
		return dhcpService{s}, nil
	}
	doctorPool = func(cfg *site.Config, stateDir string) (int, int, int, error) {
		return dhcp.PoolUsage(cfg, stateDir, time.Now())
	}
	doctorProbe = func(ctx context.Context, iface string) (string, error) {
		return dhcp.Probe(ctx, iface, dhcp.DefaultProbeWait)
	}
}
