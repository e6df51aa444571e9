package httpboot

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestForgetNodeWhileServeWrites forgets a node while another writer (as a
// running herd serve pregenerating its secrets would) keeps creating temp
// files in its directory: forget must succeed and leave nothing behind.
func TestForgetNodeWhileServeWrites(t *testing.T) {
	state := t.TempDir()
	if _, err := NodeSecrets(state, "node1"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(state, "nodes", "node1")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// What atomicfile.WriteFile does first; errors once the
				// directory is gone are the writer's, as in herd serve.
				if f, err := os.CreateTemp(dir, ".tmp-"); err == nil {
					f.Close()
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		if err := ForgetNode(state, "node1"); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("forget while another process writes the node's secrets: %v", err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil { // the node comes back
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if err := ForgetNode(state, "node1"); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(state, "nodes"))
	if err != nil || len(ents) != 0 {
		t.Fatalf("after forget, nodes/ holds %v (%v); want nothing", ents, err)
	}
	if err := ForgetNode(state, "node1"); err != nil {
		t.Fatalf("forgetting a node with no directory: %v", err)
	}
	if err := ForgetNode(t.TempDir(), "node1"); err != nil {
		t.Fatalf("forgetting in a state dir with no nodes/: %v", err)
	}
}
