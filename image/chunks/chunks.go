// Package chunks cuts an image file into content-defined chunks (a gear
// rolling hash, FastCDC style: a cut where the hash of the last bytes
// matches a mask, so an insertion moves only the cuts near it), writes the
// list as the image's index, serves chunks by their sha256 from the images
// a server holds, and assembles a new image on a node from the chunks of
// images it already has plus the ones it fetches.
//
// Why not casync/desync: github.com/folbricht/desync is not served by the
// Go module proxy these machines reach, and herd needs only the chunker,
// a flat index and an HTTP GET per chunk; chunks are not compressed
// (rootfs.squashfs is zstd-compressed already) and the server keeps no
// separate chunk store: it reads a chunk out of the published image whose
// index lists it.
package chunks

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Chunk sizes: a cut is never before MinSize, is expected about every
// AvgSize bytes, and is forced at MaxSize.
const (
	MinSize  = 16 << 10
	AvgSize  = 64 << 10
	MaxSize  = 256 << 10
	maskBits = 16 // log2(AvgSize)
)

// IndexName is the index's artifact name next to rootfs.squashfs.
const IndexName = "rootfs.index"

var gear = func() (g [256]uint64) {
	for i := range g {
		s := sha256.Sum256([]byte{'h', 'e', 'r', 'd', byte(i)})
		g[i] = binary.LittleEndian.Uint64(s[:8])
	}
	return
}()

// Chunk is one piece of an image: its place and its sha256 (its ID).
type Chunk struct {
	Offset int64
	Size   uint32
	ID     [32]byte
}

// Hex is the chunk's ID as the /chunks/ URL names it.
func (c Chunk) Hex() string { return hex.EncodeToString(c.ID[:]) }

// Index lists an image file's chunks in order.
type Index struct {
	Size   int64
	Chunks []Chunk
}

// Split reads r to the end and returns its chunk index.
func Split(r io.Reader) (*Index, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	idx := &Index{}
	buf := make([]byte, 0, MaxSize)
	mask := uint64(1)<<maskBits - 1
	mask <<= 64 - maskBits // use the well-mixed high bits
	var h uint64
	emit := func() {
		if len(buf) == 0 {
			return
		}
		idx.Chunks = append(idx.Chunks, Chunk{Offset: idx.Size, Size: uint32(len(buf)), ID: sha256.Sum256(buf)})
		idx.Size += int64(len(buf))
		buf = buf[:0]
		h = 0
	}
	for {
		b, err := br.ReadByte()
		if err == io.EOF {
			emit()
			return idx, nil
		}
		if err != nil {
			return nil, fmt.Errorf("chunk: %w", err)
		}
		buf = append(buf, b)
		h = h<<1 + gear[b]
		if len(buf) >= MinSize && (h&mask == 0 || len(buf) >= MaxSize) {
			emit()
		}
	}
}

// SplitFile is Split on a file.
func SplitFile(path string) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("chunk: %w", err)
	}
	defer f.Close()
	idx, err := Split(f)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", path, err)
	}
	return idx, nil
}

const magic = "HERDIDX1"

// MarshalBinary encodes the index: magic, size, count, then per chunk its
// size and sha256 (offsets follow from the sizes).
func (x *Index) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(magic)
	binary.Write(&b, binary.BigEndian, uint64(x.Size))
	binary.Write(&b, binary.BigEndian, uint32(len(x.Chunks)))
	for _, c := range x.Chunks {
		binary.Write(&b, binary.BigEndian, c.Size)
		b.Write(c.ID[:])
	}
	return b.Bytes(), nil
}

// ErrFormat means bytes that are not a valid index.
var ErrFormat = errors.New("not a herd chunk index")

// Parse decodes an index written by MarshalBinary, checking that the chunk
// sizes add up to the size and each lies within the chunker's bounds.
func Parse(data []byte) (*Index, error) {
	if len(data) < len(magic)+12 || string(data[:len(magic)]) != magic {
		return nil, ErrFormat
	}
	r := bytes.NewReader(data[len(magic):])
	var size uint64
	var n uint32
	binary.Read(r, binary.BigEndian, &size)
	binary.Read(r, binary.BigEndian, &n)
	if int64(r.Len()) != int64(n)*36 {
		return nil, fmt.Errorf("%w: %d chunks need %d bytes, %d left", ErrFormat, n, int64(n)*36, r.Len())
	}
	x := &Index{Chunks: make([]Chunk, n)}
	for i := range x.Chunks {
		c := &x.Chunks[i]
		binary.Read(r, binary.BigEndian, &c.Size)
		io.ReadFull(r, c.ID[:])
		if c.Size == 0 || c.Size > MaxSize {
			return nil, fmt.Errorf("%w: chunk %d has size %d", ErrFormat, i, c.Size)
		}
		c.Offset = x.Size
		x.Size += int64(c.Size)
	}
	if uint64(x.Size) != size {
		return nil, fmt.Errorf("%w: chunks add up to %d bytes, header says %d", ErrFormat, x.Size, size)
	}
	return x, nil
}

// ReadIndexFile reads an index file.
func ReadIndexFile(path string) (*Index, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("chunk index: %w", err)
	}
	x, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("chunk index %s: %w", path, err)
	}
	return x, nil
}

// Missing is how many bytes of want's chunks are in none of have: what a
// node holding the images of have downloads to get want.
func Missing(want *Index, have ...*Index) (bytes int64, chunks int) {
	known := map[[32]byte]bool{}
	for _, h := range have {
		if h == nil {
			continue
		}
		for _, c := range h.Chunks {
			known[c.ID] = true
		}
	}
	seen := map[[32]byte]bool{}
	for _, c := range want.Chunks {
		if known[c.ID] || seen[c.ID] {
			continue
		}
		seen[c.ID] = true
		bytes += int64(c.Size)
		chunks++
	}
	return bytes, chunks
}

// Transfer is what a node that caches one image downloads to boot another.
type Transfer struct {
	Bytes     int64   `json:"bytes"`
	Chunks    int     `json:"chunks"`
	ImageSize int64   `json:"image_size"`
	Fraction  float64 `json:"fraction"`
}

// TransferBetween compares the chunk indexes (IndexName) in two image
// directories: the bytes of want's chunks that have does not hold.
func TransferBetween(haveDir, wantDir string) (*Transfer, error) {
	want, err := ReadIndexFile(filepath.Join(wantDir, IndexName))
	if err != nil {
		return nil, err
	}
	have, err := ReadIndexFile(filepath.Join(haveDir, IndexName))
	if err != nil {
		return nil, err
	}
	b, n := Missing(want, have)
	t := &Transfer{Bytes: b, Chunks: n, ImageSize: want.Size}
	if want.Size > 0 {
		t.Fraction = float64(b) / float64(want.Size)
	}
	return t, nil
}
