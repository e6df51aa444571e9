package site

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const editYAML = `# lab settings — keep this comment
server:
  interface: br0
  address: 10.77.0.1
dhcp:
  mode: full            # full | proxy | off
  subnet: 10.77.0.0/24
overlays: [base, tuning]
nodes:
  # the first rack
  - name: gpu01
    mac: "52:54:00:77:00:11"
    ip: 10.77.0.11   # reserved
  - name: gpu02
    mac: "52:54:00:77:00:12"
    ip: 10.77.0.12
`

func writeSite(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "herd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAddRemoveNodeKeepsComments(t *testing.T) {
	p := writeSite(t, editYAML)
	if err := AddNode(p, Node{Name: "gpu03", MAC: "52-54-00-77-00-13", IP: "10.77.0.13", KernelArgs: "quiet"}); err != nil {
		t.Fatal(err)
	}
	out, _ := os.ReadFile(p)
	for _, c := range []string{"# lab settings — keep this comment", "# full | proxy | off", "# the first rack", "# reserved"} {
		if !strings.Contains(string(out), c) {
			t.Errorf("comment %q lost:\n%s", c, out)
		}
	}
	cfg, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, ok := cfg.NodeByName("gpu03")
	if !ok || n.MAC != "52:54:00:77:00:13" || n.IP != "10.77.0.13" || n.KernelArgs != "quiet" || len(cfg.Nodes) != 3 {
		t.Fatalf("after add: %+v", cfg.Nodes)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", st.Mode())
	}
	if _, err := RemoveNode(p, "52:54:00:77:00:11"); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.NodeByName("gpu01"); ok || len(cfg.Nodes) != 2 {
		t.Fatalf("after rm: %+v", cfg.Nodes)
	}
	out, _ = os.ReadFile(p)
	if !strings.Contains(string(out), "# full | proxy | off") {
		t.Errorf("comment lost after rm:\n%s", out)
	}
}

func TestAddNodeRefusesBadInput(t *testing.T) {
	p := writeSite(t, editYAML)
	before, _ := os.ReadFile(p)
	for _, tc := range []struct {
		n    Node
		want string
	}{
		{Node{Name: "Bad_Name", MAC: "52:54:00:77:00:20", IP: "10.77.0.20"}, "not a valid host name"},
		{Node{Name: "gpu09", MAC: "nonsense", IP: "10.77.0.20"}, "not an Ethernet MAC"},
		{Node{Name: "gpu01", MAC: "52:54:00:77:00:20", IP: "10.77.0.20"}, "herd.yaml:11:"},
		{Node{Name: "gpu09", MAC: "52:54:00:77:00:12", IP: "10.77.0.20"}, "herd.yaml:15:"},
		{Node{Name: "gpu09", MAC: "52:54:00:77:00:20", IP: "10.77.0.11"}, "herd.yaml:13:"},
		// outside the subnet: caught by re-validating the edited file
		{Node{Name: "gpu09", MAC: "52:54:00:77:00:20", IP: "10.99.0.1"}, "outside dhcp.subnet"},
		// full mode needs an ip
		{Node{Name: "gpu09", MAC: "52:54:00:77:00:20"}, "required in full DHCP mode"},
	} {
		err := AddNode(p, tc.n)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.n, err, tc.want)
		}
	}
	if _, err := RemoveNode(p, "nosuch"); err == nil {
		t.Error("removing an unknown node succeeded")
	}
	after, _ := os.ReadFile(p)
	if string(after) != string(before) {
		t.Error("a refused edit changed the file")
	}
	// A broken file is refused with its line.
	bad := writeSite(t, "server:\n  address: [\n")
	if err := AddNode(bad, Node{Name: "x", MAC: "52:54:00:77:00:20"}); err == nil || !strings.Contains(err.Error(), "herd.yaml:") {
		t.Errorf("broken file: %v", err)
	}
}

func TestAddNodeCreatesList(t *testing.T) {
	p := writeSite(t, "# empty site\ndhcp:\n  mode: off\noverlays: [base]\n")
	if err := AddNode(p, Node{Name: "gpu1", MAC: "52:54:00:00:00:01"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(p, nil)
	if err != nil || len(cfg.Nodes) != 1 {
		t.Fatalf("%v %+v", err, cfg)
	}
}
