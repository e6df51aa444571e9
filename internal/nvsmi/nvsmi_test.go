package nvsmi

import (
	"os"
	"path/filepath"
	"testing"
)

func load(t *testing.T, name string) *Log {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Parse(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return l
}

// TestRecordedOutputs parses nvidia-smi output recorded on real GPUs
// (testdata/README.md names where each came from); the expected values are
// read off the recordings themselves.
func TestRecordedOutputs(t *testing.T) {
	type want struct {
		driver, model, uuid, bus string
		persistence, known       bool
		used, total, util, temp  int
		power                    float64
		ecc, retired             int
		procs, compute           int
	}
	for file, w := range map[string]want{
		"tesla-t4.xml": {"515.105.01", "Tesla T4", "GPU-d37e67a5-91dd-3774-a5cb-99096249601a", "00000000:00:1E.0",
			false, true, 1032, 15360, 0, 40, 26.78, 0, 0, 2, 1},
		// MIG: the four instances' memory and ECC are not the GPU's.
		"a100-sxm4-v12.xml": {"535.54.03", "NVIDIA A100-SXM4-80GB", "GPU-513536b6-7d19-9063-b049-1e69664bb298", "00000000:01:00.0",
			false, true, 50, 81920, 0, 27, 67.03, 0, -1, 0, 0},
		"a10g.xml": {"515.105.01", "NVIDIA A10G", "GPU-9a9a6c50-2a47-2f51-a902-b82c3b127e94", "00000000:00:1E.0",
			false, true, 22, 23028, 0, 17, 25.58, 0, 0, 1, 0},
		"rtx-3060-v12.xml": {"570.124.04", "NVIDIA GeForce RTX 3060", "GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625", "00000000:2D:00.0",
			true, true, 116, 12288, 0, 42, 11.63, -1, -1, 0, 0},
		"gtx-1070-ti.xml": {"", "GeForce GTX 1070 Ti", "GPU-f9ba66fc-a7f5-94c5-da19-019ef2f9c665", "00000000:01:00.0",
			false, false, 42, 4096, 0, 39, 0, -1, -1, 0, 0},
		"quadro-p400.xml": {"418.43", "Quadro P400", "GPU-8f750be4-dfbc-23b9-b33f-da729a536494", "00000000:43:00.0",
			false, true, 0, 1998, 0, 33, 0, -1, -1, 0, 0},
	} {
		t.Run(file, func(t *testing.T) {
			l := load(t, file)
			if len(l.GPUs) != 1 || len(l.PersistenceKnown) != 1 {
				t.Fatalf("%d GPUs, want 1", len(l.GPUs))
			}
			g := l.GPUs[0]
			if l.Driver != w.driver || g.Driver != w.driver || g.Model != w.model || g.UUID != w.uuid || g.PCIBus != w.bus || g.Index != 0 {
				t.Errorf("identity: driver %q model %q uuid %q bus %q", l.Driver, g.Model, g.UUID, g.PCIBus)
			}
			if g.Persistence != w.persistence || l.PersistenceKnown[0] != w.known {
				t.Errorf("persistence %v (known %v)", g.Persistence, l.PersistenceKnown[0])
			}
			if g.MemoryUsedMiB != w.used || g.MemoryTotalMiB != w.total || g.UtilPercent != w.util || g.TemperatureC != w.temp || g.PowerW != w.power {
				t.Errorf("gauges: %d/%d MiB, %d%%, %dC, %vW", g.MemoryUsedMiB, g.MemoryTotalMiB, g.UtilPercent, g.TemperatureC, g.PowerW)
			}
			if g.ECCUncorrected != w.ecc || g.RetiredPages != w.retired {
				t.Errorf("ECC %d, retired %d", g.ECCUncorrected, g.RetiredPages)
			}
			compute := 0
			for _, p := range l.Processes {
				if p.GPUUUID != g.UUID || p.PID <= 0 {
					t.Errorf("process %+v", p)
				}
				if p.Compute() {
					compute++
				}
			}
			if len(l.Processes) != w.procs || compute != w.compute {
				t.Errorf("%d processes (%d compute), want %d (%d)", len(l.Processes), compute, w.procs, w.compute)
			}
		})
	}
	// The T4's compute process, as recorded.
	l := load(t, "tesla-t4.xml")
	var py *Process
	for i := range l.Processes {
		if l.Processes[i].Compute() {
			py = &l.Processes[i]
		}
	}
	if py == nil || py.PID != 5762 || py.Name != "python" || py.MemoryMiB != 1005 || py.Type != "C" {
		t.Errorf("T4 compute process %+v", py)
	}
	// A desktop's graphics processes, one with a very long command line.
	l = load(t, "rtx-3080-v12.xml")
	long := 0
	for _, p := range l.Processes {
		if p.Compute() {
			t.Errorf("a graphics process read as compute: %+v", p)
		}
		if len(p.Name) > 256 {
			long++
		}
	}
	if len(l.Processes) == 0 || long == 0 {
		t.Errorf("rtx-3080: %d processes, %d with long names", len(l.Processes), long)
	}
}

func TestParseRefusesGarbage(t *testing.T) {
	for _, s := range []string{"", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", "<nvidia_smi_log><gpu>"} {
		if _, err := Parse([]byte(s)); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
}
