package initramfs

import (
	"debug/elf"
	"io"
)

// hasInterp reports whether the ELF file has a PT_INTERP program header,
// i.e. needs a dynamic loader.
func hasInterp(r io.ReaderAt) (bool, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}
