package overlays

import (
	"encoding/json"
	"fmt"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/site"
)

// nodeConfigFile renders etc/herd/node.json (nodestatus.NodeConfig): what the
// node's status agent compares itself with — the GPUs the site expects of
// it (expect_gpus, the node's own or the site's), where homes are
// automounted and a directory group that must resolve. Nothing in it is
// secret.
func nodeConfigFile(cfg *site.Config, node *site.Node) (File, error) {
	nc := nodestatus.NodeConfig{Node: node.Name}
	if e := cfg.ExpectedGPUs(node); e != nil {
		nc.ExpectGPUs = &nodestatus.ExpectGPUs{Count: e.Count, Model: e.Model}
	}
	if cfg.NAS.Address != "" && cfg.NAS.Homes != "" {
		nc.HomeRoot = cfg.NAS.HomeRoot
	}
	if cfg.LDAP.URI != "" {
		nc.LDAPGroup = cfg.LDAP.DefaultGroup
	}
	b, err := json.MarshalIndent(nc, "", "  ")
	if err != nil {
		return File{}, fmt.Errorf("runtime overlay for %s: %s: %w", node.Name, nodestatus.NodeConfigPath, err)
	}
	return File{Overlay: RuntimeName, Path: nodestatus.NodeConfigPath, Mode: 0o644, Data: append(b, '\n')}, nil
}
