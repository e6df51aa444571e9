// Package nvsmi reads `nvidia-smi -q -x` (NVML's XML report) into the
// node status types (fleet/nodestatus): what each GPU is, its memory,
// utilisation, temperature, power, persistence mode, uncorrected ECC
// errors, retired or failed-remapped pages, and the processes holding it.
// Fields the driver reports as "N/A" or leaves out read as unknown (-1 for
// counters, 0 for gauges), never as a made-up value.
package nvsmi

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"

	"github.com/herdlab/herd/fleet/nodestatus"
)

// Log is one nvidia-smi report.
type Log struct {
	// Driver is the driver version nvidia-smi talks to ("" if absent).
	Driver string
	GPUs   []nodestatus.GPU
	// Processes are all processes on any GPU; Compute reports whether each
	// is a compute one (type C or C+G), the ones that make a node busy.
	Processes []Process
	// PersistenceKnown[i] is false when GPU i's persistence mode is absent or N/A.
	PersistenceKnown []bool
}

// Process is one process nvidia-smi lists on a GPU.
type Process struct {
	nodestatus.GPUProcess
	Type string // C, G, C+G, M, ...
}

// Compute reports whether the process does compute work (not only graphics).
func (p Process) Compute() bool { return strings.Contains(p.Type, "C") }

type xmlLog struct {
	Driver string   `xml:"driver_version"`
	GPUs   []xmlGPU `xml:"gpu"`
}

type xmlGPU struct {
	ID          string `xml:"id,attr"`
	Name        string `xml:"product_name"`
	UUID        string `xml:"uuid"`
	Persistence string `xml:"persistence_mode"`
	PCIBusID    string `xml:"pci>pci_bus_id"`
	FBTotal     string `xml:"fb_memory_usage>total"`
	FBUsed      string `xml:"fb_memory_usage>used"`
	Util        string `xml:"utilization>gpu_util"`
	Temp        string `xml:"temperature>gpu_temp"`
	Power       string `xml:"power_readings>power_draw"`
	GPUPower    string `xml:"gpu_power_readings>power_draw"`
	GPUInstant  string `xml:"gpu_power_readings>instant_power_draw"`
	ECCMode     string `xml:"ecc_mode>current_ecc"`
	// Newer drivers: per memory kind; older: single_bit/double_bit totals.
	DRAMUnc string `xml:"ecc_errors>volatile>dram_uncorrectable"`
	SRAMUnc string `xml:"ecc_errors>volatile>sram_uncorrectable"`
	DBTotal string `xml:"ecc_errors>volatile>double_bit>total"`
	// Page retirement (Pascal to Turing) and row remapping (Ampere on).
	RetiredSBE   string       `xml:"retired_pages>multiple_single_bit_retirement>retired_count"`
	RetiredDBE   string       `xml:"retired_pages>double_bit_retirement>retired_count"`
	RemapUnc     string       `xml:"remapped_rows>remapped_row_unc"`
	RemapFailure string       `xml:"remapped_rows>remapped_row_failure"`
	Processes    []xmlProcess `xml:"processes>process_info"`
}

type xmlProcess struct {
	PID    string `xml:"pid"`
	Type   string `xml:"type"`
	Name   string `xml:"process_name"`
	Memory string `xml:"used_memory"`
}

// Parse reads nvidia-smi -q -x output. GPUs are numbered in the order
// nvidia-smi lists them (its index order).
func Parse(data []byte) (*Log, error) {
	var x xmlLog
	dec := xml.NewDecoder(bytes.NewReader(data))
	// The DOCTYPE names a DTD that is never fetched; entities stay plain.
	dec.Strict = true
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("nvidia-smi XML: %w", err)
	}
	out := &Log{Driver: clean(x.Driver)}
	for i, g := range x.GPUs {
		gpu := nodestatus.GPU{
			Index:          i,
			UUID:           clean(g.UUID),
			Model:          clean(g.Name),
			PCIBus:         clean(g.PCIBusID),
			Driver:         out.Driver,
			Persistence:    clean(g.Persistence) == "Enabled",
			MemoryUsedMiB:  int(number(g.FBUsed, 0)),
			MemoryTotalMiB: int(number(g.FBTotal, 0)),
			UtilPercent:    int(number(g.Util, 0)),
			TemperatureC:   int(number(g.Temp, 0)),
			PowerW:         number(first(g.Power, g.GPUPower, g.GPUInstant), 0),
			ECCUncorrected: -1,
			RetiredPages:   -1,
		}
		if gpu.PCIBus == "" {
			gpu.PCIBus = clean(g.ID)
		}
		if clean(g.ECCMode) == "Enabled" {
			gpu.ECCUncorrected = sum(g.DRAMUnc, g.SRAMUnc, g.DBTotal)
		}
		gpu.RetiredPages = sum(g.RetiredSBE, g.RetiredDBE, g.RemapUnc)
		if clean(g.RemapFailure) == "Yes" {
			// A row that could not be remapped: the memory has a bad row in use.
			gpu.RetiredPages = max(gpu.RetiredPages, 0) + 1
		}
		p := clean(g.Persistence)
		out.PersistenceKnown = append(out.PersistenceKnown, p == "Enabled" || p == "Disabled")
		out.GPUs = append(out.GPUs, gpu)
		for _, pr := range g.Processes {
			pid, err := strconv.Atoi(clean(pr.PID))
			if err != nil {
				continue
			}
			out.Processes = append(out.Processes, Process{
				GPUProcess: nodestatus.GPUProcess{PID: pid, Name: clean(pr.Name), GPUUUID: gpu.UUID, MemoryMiB: int(number(pr.Memory, 0))},
				Type:       clean(pr.Type),
			})
		}
	}
	return out, nil
}

func clean(s string) string { return strings.TrimSpace(s) }

func first(ss ...string) string {
	for _, s := range ss {
		if _, ok := parse(s); ok {
			return s
		}
	}
	return ""
}

// parse reads "1032 MiB", "40 C", "26.78 W", "0 %", "7": the leading number.
func parse(s string) (float64, bool) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	return v, err == nil
}

func number(s string, def float64) float64 {
	if v, ok := parse(s); ok {
		return v
	}
	return def
}

// sum adds the counters that are reported; -1 when none is.
func sum(ss ...string) int {
	total, any := 0, false
	for _, s := range ss {
		if v, ok := parse(s); ok {
			total += int(v)
			any = true
		}
	}
	if !any {
		return -1
	}
	return total
}
