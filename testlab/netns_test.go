package testlab

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

func TestNetnsBridgeAndPeer(t *testing.T) {
	testenv.RequireNetns(t)
	lab, err := NewNetns("t")
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	client, err := NewNetns("tc")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := lab.AddBridge("br0", "10.99.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddTap("tap0", "br0"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddVethPeer("vc0", "br0", client, "eth0", "10.99.0.50/24"); err != nil {
		t.Fatal(err)
	}
	// A listener made inside the lab namespace is reachable from the client
	// namespace across the bridge, and not from the host.
	var ln net.Listener
	if err := lab.Do(func() (err error) { ln, err = net.Listen("tcp", "10.99.0.1:0"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	addr := ln.Addr().(*net.TCPAddr)
	out, err := client.Command(context.Background(), "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d; cat <&3", addr.IP, addr.Port)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello") {
		t.Fatalf("client could not reach the lab namespace: %v %q", err, out)
	}
	name := lab.Name
	lab.Close()
	if o, err := exec.Command("ip", "netns", "list").Output(); err != nil || strings.Contains(string(o), name) {
		t.Fatalf("namespace %s still listed after Close: %s %v", name, o, err)
	}
}
