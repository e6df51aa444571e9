package site

import (
	"strings"
	"testing"
)

func TestExampleLoads(t *testing.T) {
	c, err := Load("../examples/herd.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.DHCP.Mode != DHCPFull || len(c.Nodes) != 2 || c.Cachefilesd.Brun != 30 || c.LDAP.UIDMin != 10000 {
		t.Fatalf("unexpected config: %+v", c)
	}
	if n, ok := c.NodeByMAC("52-54-00-77-00-12"); !ok || n.Name != "gpu02" {
		t.Fatalf("NodeByMAC = %v %v", n, ok)
	}
	if c.ServerURL() != "http://10.77.0.1:8080" {
		t.Fatalf("ServerURL = %s", c.ServerURL())
	}
}

func TestValidationErrorsNameLineAndField(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"bad mode", "dhcp:\n  mode: half\n", `herd.yaml:2:9: field dhcp.mode: "half" is not one of full, proxy, off`},
		{"autofs without nas", "overlays: [autofs]\n", "field nas.address: required when the autofs overlay is enabled"},
		{"ldap without uri", "overlays: [ldap]\n", "field ldap.uri: required when the ldap overlay is enabled"},
		{"ldap without base", "overlays: [ldap]\nldap: {uri: 'ldap://x/'}\n", "field ldap.base: required"},
		{"bad mac", "overlays: []\ndhcp: {mode: off}\nnodes:\n  - name: a\n    mac: zz\n", `herd.yaml:5:10: field nodes[0].mac: "zz" is not an Ethernet MAC`},
		{"dup mac", "overlays: []\ndhcp: {mode: off}\nnodes:\n  - {name: a, mac: '52:54:00:00:00:01'}\n  - {name: b, mac: '52:54:00:00:00:01'}\n", "nodes[1].mac: 52:54:00:00:00:01 is already used by nodes[0]"},
		{"ip outside subnet", "overlays: []\nserver: {interface: e, address: 10.0.0.1}\ndhcp: {mode: full, subnet: 10.0.0.0/24}\nnodes:\n  - {name: a, mac: '52:54:00:00:00:01', ip: 10.0.1.5}\n", "nodes[0].ip: 10.0.1.5 is outside dhcp.subnet 10.0.0.0/24"},
		{"missing node name", "overlays: []\ndhcp: {mode: off}\nnodes:\n  - mac: '52:54:00:00:00:01'\n", `field nodes[0].name: required field "name" is missing`},
		{"cull order", "overlays: []\ndhcp: {mode: off}\ncachefilesd: {brun: 10, bcull: 20, bstop: 5}\n", "brun > bcull > bstop"},
		{"unknown overlay", "overlays: [gpu]\ndhcp: {mode: off}\n", `overlays[0]: unknown overlay "gpu"`},
		{"dashboard listen", "overlays: []\ndhcp: {mode: off}\ndashboard:\n  listen: 8081\n", `herd.yaml:4:11: field dashboard.listen: "8081" is not "", "off" or an address:port`},
		{"unknown field", "dhcpd: {}\n", `herd.yaml:1:1: field dhcpd: unknown field "dhcpd"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("herd.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}

func TestDefaultsAreTheReferenceLab(t *testing.T) {
	c, err := LoadOrDefault("/nonexistent/herd.yaml", true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tuning.RmemMax != 16777216 || c.Tuning.WmemDefault != 8388608 {
		t.Fatalf("tuning defaults: %+v", c.Tuning)
	}
	if !strings.Contains(c.NAS.MountOptions, "fsc") || c.Cachefilesd.Bstop != 20 {
		t.Fatalf("nas/cache defaults: %+v %+v", c.NAS, c.Cachefilesd)
	}
}

func TestOverlayFieldValidation(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"bad hash", "overlays: []\ndhcp: {mode: off}\nroot: {password_hash: 'secret'}\n", "herd.yaml:3:23: field root.password_hash: is not a crypt(3) hash"},
		{"hash with quote", "overlays: []\ndhcp: {mode: off}\nadmin: {password_hash: \"$6$a$b'c\"}\n", "field admin.password_hash: is not a crypt(3) hash"},
		{"ssh key two lines", "overlays: []\ndhcp: {mode: off}\nadmin:\n  ssh_keys: [\"ssh-ed25519 AAAA x\\nssh-rsa AAAA y\"]\n", "field admin.ssh_keys[0]: is not one OpenSSH public key line"},
		{"module option", "overlays: []\ndhcp: {mode: off}\nnvidia: {module_options: ['NVreg X']}\n", `field nvidia.module_options[0]: "NVreg X" is not NAME=VALUE`},
		{"tmp age", "overlays: []\ndhcp: {mode: off}\ntuning: {tmp_age: 10 days}\n", `field tuning.tmp_age: "10 days" is not a systemd time span`},
		{"rmem order", "overlays: []\ndhcp: {mode: off}\ntuning: {rmem_default: 33554432}\n", "field tuning.rmem_default: 33554432 is larger than rmem_max 16777216"},
		{"mount options with vers", "overlays: []\ndhcp: {mode: off}\nnas: {mount_options: 'rw,vers=3'}\n", "field nas.mount_options"},
		{"scratch with blank", "overlays: []\ndhcp: {mode: off}\ncache: {scratch_dir: '/my scratch'}\n", "field cache.scratch_dir: \"/my scratch\" must not contain blanks"},
		{"scratch relative", "overlays: []\ndhcp: {mode: off}\ncache: {scratch_dir: scratch}\n", `field cache.scratch_dir: "scratch" must be a clean absolute path other than /`},
		{"scratch root", "overlays: []\ndhcp: {mode: off}\ncache: {scratch_dir: /}\n", `field cache.scratch_dir: "/" must be a clean absolute path`},
		{"scratch age", "overlays: []\ndhcp: {mode: off}\ncache: {scratch_age: 1 month}\n", `field cache.scratch_age: "1 month" is not a systemd time span`},
		{"relative shell", "overlays: []\ndhcp: {mode: off}\nldap: {override_shell: bash}\n", "field ldap.override_shell: \"bash\" must be an absolute path"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("herd.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
	ok := "overlays: []\ndhcp: {mode: off}\nroot: {password_hash: '$y$j9T$abc/def$ghi.jkl'}\nadmin:\n  ssh_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== admin@lab']\nnvidia: {module_options: ['NVreg_X=1', 'nvidia_drm modeset=1']}\ntuning: {tmp_age: 2w}\n"
	if _, err := Parse("herd.yaml", []byte(ok)); err != nil {
		t.Fatalf("valid site rejected: %v", err)
	}
}

// Scratch defaults to /scratch, kept 30 days; "none" turns it off.
func TestScratchDefaultsAndNone(t *testing.T) {
	c, err := Parse("herd.yaml", []byte("overlays: []\ndhcp: {mode: off}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cache.Scratch() != "/scratch" || c.Cache.ScratchAge != "30d" {
		t.Fatalf("defaults: scratch %q age %q", c.Cache.Scratch(), c.Cache.ScratchAge)
	}
	c, err = Parse("herd.yaml", []byte("overlays: []\ndhcp: {mode: off}\ncache: {scratch_dir: none}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cache.Scratch() != "" {
		t.Fatalf("scratch_dir none gave %q", c.Cache.Scratch())
	}
}

// secure_boot: herd, distro and off are accepted (off by default); anything
// else is refused naming the line and field.
func TestSecureBootSetting(t *testing.T) {
	const base = "overlays: []\ndhcp: {mode: off}\n"
	c, err := Parse("herd.yaml", []byte(base+"secure_boot: distro\n"))
	if err != nil || c.SecureBoot != SecureBootDistro {
		t.Fatalf("distro: %v", err)
	}
	if c, err := Parse("herd.yaml", []byte(base)); err != nil || c.SecureBoot != SecureBootOff {
		t.Fatalf("default: %v", err)
	}
	if c, err := Parse("herd.yaml", []byte(base+"secure_boot: herd\nkernel_args: no_timer_check\n")); err != nil || c.SecureBoot != SecureBootHerd || c.KernelArgs != "no_timer_check" {
		t.Fatalf("herd: %v", err)
	}
	for _, v := range []string{"on", "yes"} {
		_, err := Parse("herd.yaml", []byte(base+"secure_boot: "+v+"\n"))
		if err == nil || !strings.Contains(err.Error(), "herd.yaml:3") || !strings.Contains(err.Error(), "secure_boot") {
			t.Errorf("secure_boot: %s: %v", v, err)
		}
	}
}

func TestBMCSettings(t *testing.T) {
	head := "overlays: []\ndhcp: {mode: off}\nnodes:\n  - name: a\n    mac: '52:54:00:00:00:01'\n    bmc:\n"
	ok := head + "      address: 10.0.1.11:6230\n      user: admin\n      password_file: /etc/herd/bmc/a.pass\n"
	c, err := Parse("herd.yaml", []byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Nodes[0].BMC
	if b == nil || b.Protocol != BMCIPMI {
		t.Fatalf("bmc = %+v", b)
	}
	if h, p, err := b.HostPort(); err != nil || h != "10.0.1.11" || p != 6230 {
		t.Fatalf("HostPort = %s %d %v", h, p, err)
	}
	cases := []struct{ name, src, want string }{
		{"redfish", ok + "      protocol: redfish\n", "herd.yaml:10:17: field nodes[0].bmc.protocol: redfish is not supported yet"},
		{"protocol", ok + "      protocol: snmp\n", `field nodes[0].bmc.protocol: "snmp" is not ipmi`},
		{"address", head + "      address: 'bmc a'\n      user: admin\n      password_file: /p\n", `herd.yaml:7:16: field nodes[0].bmc.address: "bmc a" is not a host name`},
		{"port", head + "      address: 'bmc:99999'\n      user: admin\n      password_file: /p\n", `field nodes[0].bmc.address: "bmc:99999": port "99999" is out of range`},
		{"user too long", head + "      address: bmc\n      user: abcdefghijklmnopq\n      password_file: /p\n", `herd.yaml:8:13: field nodes[0].bmc.user: "abcdefghijklmnopq" must be at most 16 bytes`},
		{"relative password file", head + "      address: bmc\n      user: admin\n      password_file: bmc.pass\n", `herd.yaml:9:22: field nodes[0].bmc.password_file: "bmc.pass" must be a clean absolute path`},
		{"missing user", head + "      address: bmc\n      password_file: /p\n", `field nodes[0].bmc.user: required field "user" is missing`},
		{"cipher", ok + "      cipher_suite: 1\n", `field nodes[0].bmc.cipher_suite: 1 is not one of 3, 8, 12, 17`},
		{"unknown", ok + "      passwd: x\n", `field nodes[0].bmc.passwd: unknown field "passwd"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("herd.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}

func TestExpectGPUs(t *testing.T) {
	src := "overlays: []\ndhcp: {mode: off}\nexpect_gpus: {count: 4, model: 1080 Ti}\nnodes:\n  - name: a\n    mac: '52:54:00:00:00:01'\n  - name: b\n    mac: '52:54:00:00:00:02'\n    expect_gpus: {count: 0}\n"
	c, err := Parse("herd.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if e := c.ExpectedGPUs(&c.Nodes[0]); e == nil || e.Count != 4 || e.Model != "1080 Ti" {
		t.Errorf("node a expects %+v", e)
	}
	if e := c.ExpectedGPUs(&c.Nodes[1]); e == nil || e.Count != 0 {
		t.Errorf("node b expects %+v", e)
	}
	if c, _ := Parse("herd.yaml", []byte("overlays: []\ndhcp: {mode: off}\n")); c.ExpectedGPUs(nil) != nil {
		t.Error("an expectation without expect_gpus")
	}
	head := "overlays: []\ndhcp: {mode: off}\nnodes:\n  - name: a\n    mac: '52:54:00:00:00:01'\n    expect_gpus:\n"
	for _, c := range []struct{ name, src, want string }{
		{"negative", head + "      count: -1\n", "herd.yaml:7:14: field nodes[0].expect_gpus.count: -1 is not a GPU count from 0 to 64"},
		{"too many", "overlays: []\ndhcp: {mode: off}\nexpect_gpus:\n  count: 65\n", "herd.yaml:4:10: field expect_gpus.count: 65 is not a GPU count"},
		{"model without count", head + "      model: A100\n", "herd.yaml:7:14: field nodes[0].expect_gpus.model: a model \"A100\" with count 0"},
		{"unknown", head + "      count: 1\n      modle: A100\n", `field nodes[0].expect_gpus.modle: unknown field "modle"`},
		{"not a number", head + "      count: four\n", "nodes[0].expect_gpus.count"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("herd.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}
