package server

import (
	"github.com/herdlab/herd/overlays"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/site"
)

func init() { DefaultRender = RuntimeOverlay }

// RuntimeOverlay renders a node's runtime overlay with the overlays
// package's templates (hostname, machine-id, SSH host keys, LDAP bind
// password) for httpboot to pack into overlay.cpio.
func RuntimeOverlay(cfg *site.Config, node *site.Node, sec httpboot.Secrets, ldapBindPassword string) ([]httpboot.RuntimeFile, error) {
	rs := overlays.RuntimeSecrets{MachineID: sec.MachineID, LDAPBindPassword: ldapBindPassword}
	for _, k := range sec.SSHHostKeys {
		rs.SSHHostKeys = append(rs.SSHHostKeys, overlays.HostKey{Type: k.Type, Private: k.Private, Public: k.Public})
	}
	files, err := overlays.RenderRuntime(cfg, node, rs)
	if err != nil {
		return nil, err
	}
	out := make([]httpboot.RuntimeFile, 0, len(files))
	for _, f := range files {
		out = append(out, httpboot.RuntimeFile{Path: f.Path, Mode: f.Mode, UID: f.UID, GID: f.GID, Data: f.Data, Link: f.Link, Dir: f.Dir})
	}
	return out, nil
}
