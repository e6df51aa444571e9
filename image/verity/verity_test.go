package verity

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

func TestParseRoundTripAndRefusals(t *testing.T) {
	p := Params{RootHash: strings.Repeat("ab", 32), DataBlocks: 733}
	got, err := Parse(p.String())
	if err != nil || *got != p {
		t.Fatalf("Parse(%q) = %+v, %v", p.String(), got, err)
	}
	for _, bad := range []string{"", strings.Repeat("ab", 32), strings.Repeat("ab", 31) + ":5", strings.Repeat("zz", 32) + ":5",
		strings.Repeat("ab", 32) + ":0", strings.Repeat("ab", 32) + ":-3", strings.Repeat("ab", 32) + ":x"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestTreeBlocks(t *testing.T) {
	for n, want := range map[int64]int64{2: 1, 128: 1, 129: 3, 733: 7, 128 * 128: 129, 128*128 + 1: 132} {
		if got := TreeBlocks(n); got != want {
			t.Errorf("TreeBlocks(%d) = %d, want %d", n, got, want)
		}
	}
}

// TestTableOptionalArguments: dm-verity's table is its ten positional
// arguments (version, data and hash device, block sizes, block counts,
// hash start, algorithm, root hash, salt), then the optional ones preceded
// by their count; the kernel refuses a count that does not match.
func TestTableOptionalArguments(t *testing.T) {
	p := Params{RootHash: strings.Repeat("ab", 32), DataBlocks: 733}
	plain := p.Table("7:0")
	want := "1 7:0 7:0 4096 4096 733 733 sha256 " + p.RootHash + " -"
	if plain != want {
		t.Fatalf("Table = %q, want %q", plain, want)
	}
	if got := p.Table("7:0", "try_verify_in_tasklet"); got != want+" 1 try_verify_in_tasklet" {
		t.Errorf("Table with one option = %q", got)
	}
	if got := p.Table("7:0", "a", "b"); got != want+" 2 a b" {
		t.Errorf("Table with two options = %q", got)
	}
}

// TestFormatMatchesVeritysetupVerify: the tree Format appends is the one
// the reference tool verifies with the recorded root hash, the same input
// gives the same root hash (no salt), and one flipped data byte fails it.
func TestFormatMatchesVeritysetupVerify(t *testing.T) {
	testenv.RequireCommands(t, "veritysetup")
	dir := t.TempDir()
	data := make([]byte, 300*BlockSize)
	rand.Read(data)
	var roots []string
	for i := 0; i < 2; i++ {
		p := filepath.Join(dir, "img"+string(rune('a'+i)))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		v, err := Format(context.Background(), p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v.DataBlocks != 300 || v.HashOffset != int64(len(data)) {
			t.Fatalf("verity record %+v", v)
		}
		roots = append(roots, v.RootHash)
		verify := func() error {
			return exec.Command("veritysetup", "verify", "--no-superblock", "--hash=sha256", "--data-block-size=4096",
				"--hash-block-size=4096", "--salt=-", "--data-blocks=300", "--hash-offset="+itoa(v.HashOffset), p, p, v.RootHash).Run()
		}
		if err := verify(); err != nil {
			t.Fatalf("veritysetup verify of a fresh tree: %v", err)
		}
		if i == 1 {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			f.WriteAt([]byte{data[5000] ^ 1}, 5000)
			f.Close()
			if err := verify(); err == nil {
				t.Fatal("veritysetup verify accepted a flipped data byte")
			}
		}
	}
	if roots[0] != roots[1] {
		t.Errorf("same data, different root hashes %v", roots)
	}
	if err := os.WriteFile(filepath.Join(dir, "odd"), make([]byte, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Format(context.Background(), filepath.Join(dir, "odd"), nil); err == nil || !strings.Contains(err.Error(), "4096") {
		t.Errorf("unpadded file: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
