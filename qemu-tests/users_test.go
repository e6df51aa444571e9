package qemutests

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// What a new student does on day one (issue 22), as alice (an LDAP user):
// a venv in the NFS home made on gpu01, with a package from a wheel in the
// home (no network), runs a script on gpu02; a C extension builds with the
// image's compiler; /scratch/alice is hers on the SSD and survives a reboot;
// the login message says this node has no GPU.
func init() {
	labExtras = append(labExtras, labExtra{name: "users-day-one", run: usersDayOne})
	labAfterReboot = append(labAfterReboot, labExtra{name: "scratch-survives-reboot", run: scratchAfterReboot})
}

// scratchMark is what usersDayOne left in gpu01's /scratch/alice.
var scratchMark string

func usersDayOne(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	gpu01, gpu02 := nodes["gpu01"], nodes["gpu02"]
	if gpu01 == nil {
		t.Fatal("gpu01 is not up")
	}
	run := func(b *testlab.Booted, cmd string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		out, err := b.User.Run(cctx, cmd)
		if err != nil {
			t.Fatalf("%s: %v\n%s", b.Node.Name, err, out)
		}
		return out
	}

	t.Run("venv-in-home-runs-on-every-node", func(t *testing.T) {
		if gpu02 == nil {
			t.Fatal("gpu02 is not up")
		}
		// The wheel lies in alice's home on the NAS, put there as she would
		// copy it in; the nodes have no network to an index.
		whl, err := pureWheel()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(lab.HomesDir, "alice", "herdhello-1.0-py3-none-any.whl")
		if err := os.WriteFile(p, whl, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, gpu01.UID, gpu01.GID); err != nil {
			t.Fatal(err)
		}
		run(gpu01, "python3 -m venv ~/venv && ~/venv/bin/pip install -q --no-index ~/herdhello-1.0-py3-none-any.whl && "+
			"printf 'import herdhello, socket\\nprint(herdhello.greet(), socket.gethostname(), herdhello.__file__)\\n' > ~/hello.py")
		out := strings.TrimSpace(run(gpu02, "~/venv/bin/python ~/hello.py"))
		if want := "hello from herdhello gpu02 /home/alice/venv/lib/"; !strings.HasPrefix(out, want) {
			t.Fatalf("the venv made on gpu01 ran on gpu02 as %q, want %q...", out, want)
		}
	})

	t.Run("c-extension-builds", func(t *testing.T) {
		src := `#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject *add(PyObject *self, PyObject *args) {
	long a, b;
	if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
	return PyLong_FromLong(a + b);
}
static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "add two integers"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "spam", NULL, -1, methods};
PyMODINIT_FUNC PyInit_spam(void) { return PyModule_Create(&mod); }
`
		b64 := base64.StdEncoding.EncodeToString([]byte(src))
		out := run(gpu01, "mkdir -p ~/cext && cd ~/cext && echo "+b64+" | base64 -d > spam.c && "+
			"gcc -shared -fPIC -O2 $(python3-config --includes) spam.c -o spam$(python3-config --extension-suffix) && "+
			"~/venv/bin/python -c 'import spam; print(spam.add(40, 2))'")
		if strings.TrimSpace(out) != "42" {
			t.Fatalf("the C extension printed %q, want 42", out)
		}
	})

	t.Run("scratch-on-ssd", func(t *testing.T) {
		out := strings.Fields(run(gpu01, "stat -c '%a %U %F' /scratch/alice && findmnt -n -o SOURCE,FSTYPE -T /scratch/alice && "+
			"findmnt -n -o SOURCE -M /var/cache/herd && lsblk -n -o LABEL $(findmnt -n -o SOURCE -M /var/cache/herd)"))
		// 700 alice directory <src> ext4 <cache src> herd-cache
		if len(out) != 7 {
			t.Fatalf("unexpected scratch report %q", out)
		}
		if out[0] != "700" || out[1] != "alice" || out[2] != "directory" {
			t.Errorf("/scratch/alice is %s %s %s, want a 700 directory of alice's", out[0], out[1], out[2])
		}
		// A bind mount's source reads /dev/vdX1[/scratch].
		if src, _, _ := strings.Cut(out[3], "["); out[4] != "ext4" || src != out[5] || out[6] != "herd-cache" {
			t.Errorf("/scratch/alice is on %s (%s), want the herd-cache SSD %s (label %s), not the RAM overlay", out[3], out[4], out[5], out[6])
		}
		mark := make([]byte, 8)
		rand.Read(mark)
		scratchMark = hex.EncodeToString(mark)
		run(gpu01, "echo "+scratchMark+" > /scratch/alice/keep && sync")
	})

	t.Run("motd-at-login", func(t *testing.T) {
		out, err := loginBanner(ctx, gpu01.User, "Scratch: ")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"herd node gpu01, image generation " + lab.ImageID, "GPUs: no NVIDIA GPU on this node",
			"Home:    /home/<you>", "Public:  /media/Public", "Scratch: /scratch/<you>, on this node's SSD"} {
			if !strings.Contains(out, want) {
				t.Errorf("the login message lacks %q:\n%s", want, out)
			}
		}
	})
}

// After gpu01's reboot its SSD keeps /scratch/alice and the file in it.
func scratchAfterReboot(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	if scratchMark == "" {
		t.Fatal("users-day-one left no file in /scratch/alice")
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := nodes["gpu01"].User.Run(cctx, "stat -c '%a %U' /scratch/alice && cat /scratch/alice/keep && findmnt -n -o FSTYPE -T /scratch/alice")
	if err != nil {
		t.Fatal(err)
	}
	if want := "700 alice\n" + scratchMark + "\next4\n"; out != want {
		t.Fatalf("after the reboot /scratch/alice reads %q, want %q", out, want)
	}
}

// loginBanner opens an interactive SSH session (a pty and a shell, as a
// user's ssh does), waits until the node has printed until (or 30 s), leaves
// and returns what the node printed: the motd comes only with such a login,
// not with `ssh node command`. "exit" goes in only after the banner: typed
// at once (stdin then EOF), it raced the login under load and the session
// once ended having printed nothing at all (local make test, 12:58).
func loginBanner(ctx context.Context, g *testlab.Guest, until string) (string, error) {
	c, err := g.Dial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	if err := s.RequestPty("dumb", 40, 200, nil); err != nil {
		return "", fmt.Errorf("pty: %w", err)
	}
	var out testenv.Buffer
	s.Stdout, s.Stderr = &out, &out
	stdin, err := s.StdinPipe()
	if err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() {
		if err := s.Shell(); err != nil {
			done <- err
			return
		}
		done <- s.Wait()
	}()
	for wait := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), until) && time.Now().Before(wait); {
		time.Sleep(200 * time.Millisecond)
	}
	io.WriteString(stdin, "exit\n")
	stdin.Close()
	select {
	case err = <-done:
	case <-ctx.Done():
		return out.String(), ctx.Err()
	case <-time.After(2 * time.Minute):
		return out.String(), fmt.Errorf("the login shell did not exit within 2 minutes; it printed:\n%s", out.String())
	}
	return out.String(), err
}

// pureWheel writes a pure-Python wheel by hand (a zip with the package,
// METADATA, WHEEL and a RECORD of sha256 digests), as `pip wheel` would.
func pureWheel() ([]byte, error) {
	files := []struct{ name, data string }{
		{"herdhello/__init__.py", "def greet():\n    return \"hello from herdhello\"\n"},
		{"herdhello-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: herdhello\nVersion: 1.0\nSummary: herd's day-one test package\n"},
		{"herdhello-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: herd-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, err := z.Create(f.name)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write([]byte(f.data)); err != nil {
			return nil, err
		}
		sum := sha256.Sum256([]byte(f.data))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.data))
	}
	record.WriteString("herdhello-1.0.dist-info/RECORD,,\n")
	w, err := z.Create("herdhello-1.0.dist-info/RECORD")
	if err != nil {
		return nil, err
	}
	if _, err := w.Write([]byte(record.String())); err != nil {
		return nil, err
	}
	if err := z.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
