// Package inventory keeps what the boot server has seen of each node — last
// DHCP exchange, last boot event, the image and driver it came up with — in
// <state>/nodes.json, so `herd node list` and `herd image list` can show it
// without the server running. Every change is written atomically; one
// Inventory value serialises concurrent updates within the server process.
package inventory

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/atomicfile"
)

// FileName is the inventory's file inside the state directory.
const FileName = "nodes.json"

// Stages a node reports, in boot order (HACKING.md boot contract).
var Stages = []string{"network", "disk", "download", "verify", "mount", "switch_root", "up", "error"}

// Event is one boot progress report POSTed by a node to /events.
type Event struct {
	Node    string    `json:"node"`
	MAC     string    `json:"mac"`
	Stage   string    `json:"stage"`
	Percent int       `json:"percent"`
	Message string    `json:"message"`
	Image   string    `json:"image"`
	Kernel  string    `json:"kernel"`
	NVIDIA  string    `json:"nvidia"`
	Time    time.Time `json:"time"`
	// Interfaces and Degraded come with "up" (image/nodeboot.Link).
	Interfaces []Link   `json:"interfaces,omitempty"`
	Degraded   []string `json:"degraded,omitempty"`
	// Cache comes with "up": the images the node holds on its SSD, so the
	// server can say what its next boot downloads (nil: not reported).
	Cache *Cache `json:"cache,omitempty"`
}

// Cache is what a node reports of its image cache: whether it has a cache
// SSD, and the sha256 of each root image on it (rootfs.squashfs).
type Cache struct {
	Disk   bool     `json:"disk"`
	Images []string `json:"images,omitempty"`
}

// MaxCachedImages bounds the images one up event may list.
const MaxCachedImages = 64

// Link is one of a node's network interfaces as it reported it (the same
// in its "up" event and in its status reports).
type Link = nodestatus.Link

// Validate checks an event's fields and normalises its MAC.
func (e *Event) Validate() error {
	hw, err := net.ParseMAC(e.MAC)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("event field mac: %q is not an Ethernet MAC address", e.MAC)
	}
	e.MAC = hw.String()
	ok := false
	for _, s := range Stages {
		ok = ok || s == e.Stage
	}
	if !ok {
		return fmt.Errorf("event field stage: %q is not one of %s", e.Stage, strings.Join(Stages, ", "))
	}
	if e.Percent < 0 || e.Percent > 100 {
		return fmt.Errorf("event field percent: %d is outside 0-100", e.Percent)
	}
	for name, v := range map[string]string{"node": e.Node, "image": e.Image, "kernel": e.Kernel, "nvidia": e.NVIDIA} {
		if len(v) > 256 || strings.ContainsAny(v, "\x00\n\r") {
			return fmt.Errorf("event field %s: longer than 256 bytes or has control characters", name)
		}
	}
	if len(e.Message) > 4096 {
		e.Message = e.Message[:4096]
	}
	if err := nodestatus.ValidateNetwork("event field ", e.Interfaces, e.Degraded); err != nil {
		return err
	}
	if c := e.Cache; c != nil {
		if len(c.Images) > MaxCachedImages {
			return fmt.Errorf("event field cache.images: %d entries, at most %d", len(c.Images), MaxCachedImages)
		}
		if !c.Disk && len(c.Images) > 0 {
			return fmt.Errorf("event field cache.images: %d images without a cache disk", len(c.Images))
		}
		for i, h := range c.Images {
			if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
				return fmt.Errorf("event field cache.images[%d]: %q is not a lower-case hex sha256", i, h)
			}
		}
	}
	return nil
}

// Record is what the server knows about one node (keyed by MAC).
type Record struct {
	Name string `json:"name,omitempty"`
	MAC  string `json:"mac"`
	// LastDHCP is the last DHCP exchange and the address it gave or saw.
	LastDHCP   time.Time `json:"last_dhcp,omitzero"`
	LastDHCPIP string    `json:"last_dhcp_ip,omitempty"`
	// Address is where the node's last event or request came from.
	Address string `json:"address,omitempty"`
	// Stage, Percent, Message, StageTime: the last boot event.
	Stage     string    `json:"stage,omitempty"`
	Percent   int       `json:"percent,omitempty"`
	Message   string    `json:"message,omitempty"`
	StageTime time.Time `json:"stage_time,omitzero"`
	// Image, Kernel, NVIDIA are what the node reported in its last "up" event.
	Image  string    `json:"image,omitempty"`
	Kernel string    `json:"kernel,omitempty"`
	NVIDIA string    `json:"nvidia,omitempty"`
	UpTime time.Time `json:"up_time,omitzero"`
	// Interfaces and Degraded are the node's links and what it found not
	// working (e.g. "degraded: storage network down (...)"), from its last
	// "up" event or, newer, its last status report that carried them;
	// LinksTime is when the server received them.
	Interfaces []Link    `json:"interfaces,omitempty"`
	Degraded   []string  `json:"degraded,omitempty"`
	LinksTime  time.Time `json:"links_time,omitzero"`
	// Cache is the node's image cache as its last "up" event reported it
	// (nil: never reported, e.g. an older agent).
	Cache *Cache `json:"cache,omitempty"`
	// Boots counts "up" events; Errors counts "error" events.
	Boots  int `json:"boots"`
	Errors int `json:"errors"`
	// ScriptServed is when the node last fetched its iPXE script, and which image it named.
	ScriptServed time.Time `json:"script_served,omitzero"`
	ScriptImage  string    `json:"script_image,omitempty"`
	// Status is the node's latest signed status report (fleet/nodestatus),
	// StatusTime when the server received it (the server's clock).
	Status     *nodestatus.Report `json:"status,omitempty"`
	StatusTime time.Time          `json:"status_time,omitzero"`
}

// Inventory is the set of records, loaded from and saved to <state>/nodes.json.
type Inventory struct {
	path   string
	mu     sync.Mutex
	recs   map[string]*Record
	notify func(Change)
	// Write coalescing: a change is written at once when the last write is
	// FlushInterval old, else by a timer at that point; so a flood of
	// events costs one rewrite per FlushInterval, not one each.
	dirty     bool
	lastWrite time.Time
	timer     *time.Timer
	writes    int
	log       func(err error)
	// forgetDir, when set (ServeForgets), holds ForgetIn requests;
	// forgetSeen is its modification time when last read.
	forgetDir  string
	forgetSeen time.Time
}

// Bounds on what unauthenticated traffic can make the inventory hold.
const (
	// FlushInterval is the shortest time between two rewrites of nodes.json.
	FlushInterval = 2 * time.Second
	// MaxUnconfirmed bounds the records the server has not itself seen
	// under a configured name (DHCP or script for a node in herd.yaml):
	// undiscovered MACs and event-only records. Over it, the least
	// recently active go first.
	MaxUnconfirmed = 1024
	// UnconfirmedTTL is how long such a record is kept without activity.
	UnconfirmedTTL = 7 * 24 * time.Hour
)

// Change is one update of a record, as passed to the Notify hook.
type Change struct {
	// Kind is "dhcp", "script", "event" or "status".
	Kind   string `json:"kind"`
	Record Record `json:"record"`
	// Event is the boot event that caused the change (Kind "event").
	Event *Event `json:"event,omitempty"`
}

// Notify sets fn to be called after every change (the server's live feed
// for the dashboard; nodes.json follows within FlushInterval). fn runs with
// the inventory locked, in the order of the changes, and must not block.
func (inv *Inventory) Notify(fn func(Change)) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.notify = fn
}

// file is the on-disk form.
type file struct {
	Nodes []Record `json:"nodes"`
}

// Load reads <stateDir>/nodes.json; a missing file is an empty inventory.
func Load(stateDir string) (*Inventory, error) {
	inv := &Inventory{path: filepath.Join(stateDir, FileName), recs: map[string]*Record{}}
	data, err := os.ReadFile(inv.path)
	if errors.Is(err, os.ErrNotExist) {
		return inv, nil
	}
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("inventory %s: %w", inv.path, err)
	}
	for i := range f.Nodes {
		r := f.Nodes[i]
		inv.recs[r.MAC] = &r
	}
	return inv, nil
}

// Records returns a copy of all records, sorted by name then MAC.
func (inv *Inventory) Records() []Record {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.applyForgetsLocked()
	return inv.sortedLocked()
}

func (inv *Inventory) sortedLocked() []Record {
	out := make([]Record, 0, len(inv.recs))
	for _, r := range inv.recs {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].MAC < out[j].MAC
	})
	return out
}

// Get returns the record of a MAC (any spelling).
func (inv *Inventory) Get(mac string) (Record, bool) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return Record{}, false
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.applyForgetsLocked()
	r, ok := inv.recs[hw.String()]
	if !ok {
		return Record{}, false
	}
	return *r, true
}

// CountByImage counts nodes whose last "up" event reported each image ID.
func (inv *Inventory) CountByImage() map[string]int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	m := map[string]int{}
	for _, r := range inv.recs {
		if r.Image != "" {
			m[r.Image]++
		}
	}
	return m
}

// update applies fn to the record of mac and saves the inventory.
func (inv *Inventory) update(kind string, ev *Event, mac string, fn func(r *Record)) error {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("inventory: %q is not an Ethernet MAC address", mac)
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.applyForgetsLocked()
	key := hw.String()
	r, ok := inv.recs[key]
	if !ok {
		r = &Record{MAC: key}
	}
	fn(r)
	inv.recs[key] = r
	if !ok && len(inv.recs) > MaxUnconfirmed {
		inv.boundLocked(time.Now())
	}
	err = inv.markDirtyLocked()
	if inv.notify != nil {
		inv.notify(Change{Kind: kind, Record: *r, Event: ev})
	}
	return err
}

// confirmed reports whether the server itself saw r under a configured
// name (DHCP or script): such records are never evicted.
func confirmed(r *Record) bool {
	return r.Name != "" && (!r.LastDHCP.IsZero() || !r.ScriptServed.IsZero())
}

// active is r's most recent activity.
func active(r *Record) time.Time {
	t := r.LastDHCP
	for _, u := range []time.Time{r.StageTime, r.ScriptServed, r.UpTime, r.StatusTime} {
		if u.After(t) {
			t = u
		}
	}
	return t
}

// boundLocked drops unconfirmed records idle for UnconfirmedTTL, then the
// least recently active ones over MaxUnconfirmed.
func (inv *Inventory) boundLocked(now time.Time) {
	var unconf []*Record
	for k, r := range inv.recs {
		if confirmed(r) {
			continue
		}
		if now.Sub(active(r)) > UnconfirmedTTL {
			delete(inv.recs, k)
			continue
		}
		unconf = append(unconf, r)
	}
	if len(unconf) <= MaxUnconfirmed {
		return
	}
	// Down to three quarters, so a flood sorts once per MaxUnconfirmed/4
	// new records rather than once per record.
	sort.Slice(unconf, func(i, j int) bool { return active(unconf[i]).Before(active(unconf[j])) })
	for _, r := range unconf[:len(unconf)-MaxUnconfirmed*3/4] {
		delete(inv.recs, r.MAC)
	}
}

// markDirtyLocked writes now if the last write is FlushInterval old, else
// makes sure a timer writes then.
func (inv *Inventory) markDirtyLocked() error {
	inv.dirty = true
	if inv.timer != nil {
		return nil
	}
	if wait := FlushInterval - time.Since(inv.lastWrite); wait > 0 {
		inv.timer = time.AfterFunc(wait, inv.flushLater)
		return nil
	}
	return inv.flushLocked()
}

func (inv *Inventory) flushLater() {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.timer = nil
	if err := inv.flushLocked(); err != nil {
		if inv.log != nil {
			inv.log(err)
		}
		// Try again later; memory keeps the changes meanwhile.
		inv.timer = time.AfterFunc(FlushInterval, inv.flushLater)
	}
}

func (inv *Inventory) flushLocked() error {
	inv.applyForgetsLocked()
	if !inv.dirty {
		return nil
	}
	inv.lastWrite = time.Now()
	inv.boundLocked(inv.lastWrite)
	if err := inv.saveLocked(); err != nil {
		return err
	}
	inv.dirty = false
	inv.writes++
	return nil
}

// Flush writes pending changes to nodes.json now (on shutdown, in tests).
func (inv *Inventory) Flush() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.timer != nil {
		inv.timer.Stop()
		inv.timer = nil
	}
	return inv.flushLocked()
}

// OnWriteError sets fn to be told when a delayed write of nodes.json fails
// (it is retried every FlushInterval).
func (inv *Inventory) OnWriteError(fn func(error)) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.log = fn
}

func (inv *Inventory) saveLocked() error {
	data, err := json.MarshalIndent(file{Nodes: inv.sortedLocked()}, "", "  ")
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	if err := atomicfile.WriteFile(inv.path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	return nil
}

// RecordDHCP notes a DHCP exchange: the node (name may be "" for unknown
// MACs) was offered or acknowledged ip at t.
func (inv *Inventory) RecordDHCP(mac, name, ip string, t time.Time) error {
	return inv.update("dhcp", nil, mac, func(r *Record) {
		if name != "" {
			r.Name = name
		}
		r.LastDHCP, r.LastDHCPIP = t.UTC(), ip
	})
}

// RecordScript notes that the node fetched its iPXE script naming image.
func (inv *Inventory) RecordScript(mac, name, image, from string, t time.Time) error {
	return inv.update("script", nil, mac, func(r *Record) {
		if name != "" {
			r.Name = name
		}
		r.ScriptServed, r.ScriptImage, r.Address = t.UTC(), image, from
	})
}

// RecordEvent stores a validated boot event received from address from.
// The event's own time is kept only if given; otherwise the server's clock.
func (inv *Inventory) RecordEvent(e Event, from string, now time.Time) error {
	if err := e.Validate(); err != nil {
		return err
	}
	t := now.UTC()
	ev := e
	ev.Time = t
	return inv.update("event", &ev, e.MAC, func(r *Record) {
		if e.Node != "" {
			r.Name = e.Node
		}
		r.Address = from
		r.Stage, r.Percent, r.Message, r.StageTime = e.Stage, e.Percent, e.Message, t
		switch e.Stage {
		case "up":
			r.Boots++
			r.Image, r.Kernel, r.NVIDIA, r.UpTime = e.Image, e.Kernel, e.NVIDIA, t
			r.Interfaces, r.Degraded, r.LinksTime = e.Interfaces, e.Degraded, t
			r.Cache = e.Cache
		case "error":
			r.Errors++
		}
	})
}

// RecordStatus stores a node's latest status report (validated, from a
// signed request) in the record of mac, received from address from at now.
// Only the latest is kept; nodes.json follows within FlushInterval, so a
// report a minute from every node costs a rewrite per FlushInterval at most.
// A report's Network replaces the record's Interfaces and Degraded (it is
// kept there, not in Status); a report without (an older agent) leaves
// them as the "up" event said.
func (inv *Inventory) RecordStatus(mac string, rep *nodestatus.Report, from string, now time.Time) error {
	if rep == nil {
		return errors.New("inventory: no status report")
	}
	if err := rep.Validate(); err != nil {
		return err
	}
	cp := *rep
	network := cp.Network
	cp.Network = nil
	return inv.update("status", nil, mac, func(r *Record) {
		if cp.Node != "" {
			r.Name = cp.Node
		}
		r.Address = from
		r.Status, r.StatusTime = &cp, now.UTC()
		if network != nil {
			r.Interfaces = append([]Link(nil), network.Interfaces...)
			r.Degraded = append([]string(nil), network.Degraded...)
			r.LinksTime = now.UTC()
		}
	})
}

// Forget removes a node's record (after `herd node rm`).
func (inv *Inventory) Forget(mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return fmt.Errorf("inventory: %q is not a MAC address", mac)
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	r, ok := inv.recs[hw.String()]
	if !ok {
		return nil
	}
	delete(inv.recs, hw.String())
	inv.dirty = true
	if err := inv.flushLocked(); err != nil {
		inv.recs[hw.String()] = r
		return err
	}
	return nil
}
