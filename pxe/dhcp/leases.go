package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/site"
)

// Lease is one address bound (or offered) to a MAC.
type Lease struct {
	MAC      string     `json:"mac"`
	IP       netip.Addr `json:"ip"`
	Hostname string     `json:"hostname,omitempty"`
	Expires  time.Time  `json:"expires"`
	// Offered is true until the client REQUESTs the address; offers are
	// never persisted.
	Offered bool `json:"-"`
}

// Leases is the lease state the reply logic reads and updates. It is not
// safe for concurrent use; the server serialises access.
type Leases struct {
	byMAC    map[string]*Lease
	byIP     map[netip.Addr]string    // address → MAC of its lease or offer (index: no scan per candidate)
	declined map[netip.Addr]time.Time // address → end of its probation
	cursor   netip.Addr               // where the next search for a free address starts
	dirty    bool
}

// NewLeases returns an empty lease table.
func NewLeases() *Leases {
	return &Leases{byMAC: map[string]*Lease{}, byIP: map[netip.Addr]string{}, declined: map[netip.Addr]time.Time{}}
}

type leaseFile struct {
	Leases   []Lease              `json:"leases"`
	Declined map[string]time.Time `json:"declined,omitempty"`
}

// LoadLeases reads <path> (leases.json); a missing file is an empty table.
func LoadLeases(path string) (*Leases, error) {
	l := NewLeases()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i := range f.Leases {
		le := f.Leases[i]
		if le.MAC == "" || !le.IP.Is4() {
			return nil, fmt.Errorf("%s: lease %d has no MAC or no IPv4 address", path, i)
		}
		l.byMAC[le.MAC] = &le
		l.byIP[le.IP] = le.MAC
	}
	for s, t := range f.Declined {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s: declined address %q: %w", path, s, err)
		}
		l.declined[a] = t
	}
	return l, nil
}

// Save writes the bound leases to path atomically (offers are left out).
func (l *Leases) Save(path string) error {
	f := leaseFile{Leases: []Lease{}, Declined: map[string]time.Time{}}
	for _, le := range l.byMAC {
		if !le.Offered {
			f.Leases = append(f.Leases, *le)
		}
	}
	sort.Slice(f.Leases, func(i, j int) bool { return f.Leases[i].MAC < f.Leases[j].MAC })
	for a, t := range l.declined {
		f.Declined[a.String()] = t
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("save leases: %w", err)
	}
	l.dirty = false
	return nil
}

// Dirty reports whether bound leases changed since the last Save.
func (l *Leases) Dirty() bool { return l.dirty }

// Get returns the unexpired lease of mac.
func (l *Leases) Get(mac string, now time.Time) (Lease, bool) {
	le, ok := l.byMAC[mac]
	if !ok || now.After(le.Expires) {
		return Lease{}, false
	}
	return *le, true
}

// All returns a copy of every lease, bound or offered.
func (l *Leases) All() []Lease {
	out := make([]Lease, 0, len(l.byMAC))
	for _, le := range l.byMAC {
		out = append(out, *le)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MAC < out[j].MAC })
	return out
}

func (l *Leases) set(le Lease) {
	old, had := l.byMAC[le.MAC]
	if !le.Offered || (had && !old.Offered) {
		l.dirty = true
	}
	if had && l.byIP[old.IP] == le.MAC {
		delete(l.byIP, old.IP)
	}
	if other, ok := l.byIP[le.IP]; ok && other != le.MAC {
		// The address moves to le.MAC (the other lease expired or was
		// taken over): the other MAC's record goes.
		l.drop(other)
	}
	l.byMAC[le.MAC] = &le
	l.byIP[le.IP] = le.MAC
}

func (l *Leases) drop(mac string) {
	if le, ok := l.byMAC[mac]; ok {
		if !le.Offered {
			l.dirty = true
		}
		delete(l.byMAC, mac)
		if l.byIP[le.IP] == mac {
			delete(l.byIP, le.IP)
		}
	}
}

// Prune forgets expired leases and offers and declined addresses whose
// probation is over, so the table stays as large as what is in use.
func (l *Leases) Prune(now time.Time) {
	for mac, le := range l.byMAC {
		if now.After(le.Expires) {
			l.drop(mac)
		}
	}
	for a, t := range l.declined {
		if !now.Before(t) {
			delete(l.declined, a)
			l.dirty = true
		}
	}
}

// Declined returns how many addresses are in probation after a DECLINE.
func (l *Leases) Declined(now time.Time) int {
	n := 0
	for _, t := range l.declined {
		if now.Before(t) {
			n++
		}
	}
	return n
}

func (l *Leases) decline(a netip.Addr, until time.Time) {
	l.declined[a] = until
	l.dirty = true
}

// holder returns the MAC holding a, if its lease (or offer) is unexpired.
func (l *Leases) holder(a netip.Addr, now time.Time) (string, bool) {
	mac, ok := l.byIP[a]
	if !ok {
		return "", false
	}
	if le := l.byMAC[mac]; le != nil && le.IP == a && !now.After(le.Expires) {
		return mac, true
	}
	return "", false
}

func (l *Leases) isDeclined(a netip.Addr, now time.Time) bool {
	t, ok := l.declined[a]
	return ok && now.Before(t)
}

// PoolUsage reads <stateDir>/leases.json and reports cfg's dynamic pool:
// its size, the addresses a new client could get now, and those in
// probation after a DECLINE (for herd doctor).
func PoolUsage(cfg *site.Config, stateDir string, now time.Time) (size, free, declined int, err error) {
	p, err := NewPlan(cfg, "")
	if err != nil {
		return 0, 0, 0, err
	}
	l, err := LoadLeases(filepath.Join(stateDir, "leases.json"))
	if err != nil {
		return 0, 0, 0, err
	}
	size = p.PoolSize()
	if size == 0 {
		return 0, 0, 0, nil
	}
	return size, PoolFree(p, l, now), l.Declined(now), nil
}
