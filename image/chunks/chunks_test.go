package chunks

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func TestSplitBoundsAndShiftResistance(t *testing.T) {
	data := make([]byte, 8<<20)
	rand.Read(data)
	x, err := Split(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var off int64
	for i, c := range x.Chunks {
		if c.Offset != off || (c.Size < MinSize && i != len(x.Chunks)-1) || c.Size > MaxSize {
			t.Fatalf("chunk %d: %+v (offset want %d)", i, c, off)
		}
		off += int64(c.Size)
	}
	if off != int64(len(data)) || x.Size != off {
		t.Fatalf("chunks cover %d of %d bytes", off, len(data))
	}
	// Ten bytes inserted at the front: all but the chunks near the edit repeat.
	shifted := append([]byte("0123456789"), data...)
	y, _ := Split(bytes.NewReader(shifted))
	missing, n := Missing(y, x)
	if missing > 2*MaxSize || n > 3 {
		t.Errorf("an insertion of 10 bytes left %d bytes in %d chunks to fetch", missing, n)
	}
	if m, _ := Missing(x, x); m != 0 {
		t.Errorf("same image: %d bytes missing", m)
	}
}

func TestIndexRoundTripAndRefusals(t *testing.T) {
	data := make([]byte, 1<<20)
	rand.Read(data)
	x, _ := Split(bytes.NewReader(data))
	b, _ := x.MarshalBinary()
	y, err := Parse(b)
	if err != nil || y.Size != x.Size || len(y.Chunks) != len(x.Chunks) || y.Chunks[3] != x.Chunks[3] {
		t.Fatalf("round trip: %v", err)
	}
	for name, bad := range map[string][]byte{
		"short":      b[:10],
		"magic":      append([]byte("XERDIDX1"), b[8:]...),
		"truncated":  b[:len(b)-1],
		"size lies":  append(append([]byte(nil), b[:8]...), append([]byte{0, 0, 0, 0, 0, 0, 0, 1}, b[16:]...)...),
		"zero chunk": func() []byte { c := append([]byte(nil), b...); copy(c[20:24], []byte{0, 0, 0, 0}); return c }(),
	} {
		if _, err := Parse(bad); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}
