package nodeboot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/herdlab/herd/internal/nodeauth"
)

// Event is one boot progress report (HACKING.md "Boot events").
type Event struct {
	Node    string    `json:"node"`
	MAC     string    `json:"mac"`
	Stage   string    `json:"stage"`
	Percent int       `json:"percent"`
	Message string    `json:"message"`
	Image   string    `json:"image"`
	Kernel  string    `json:"kernel,omitempty"`
	NVIDIA  string    `json:"nvidia,omitempty"`
	Time    time.Time `json:"time"`
	// Interfaces and Degraded come with "up": the node's links as it sees
	// them and one "degraded: <network> network down (...)" per declared
	// network that is not working.
	Interfaces []Link   `json:"interfaces,omitempty"`
	Degraded   []string `json:"degraded,omitempty"`
	// Cache comes with "up": the images on the cache SSD, so the server
	// can tell the admin what the next boot downloads.
	Cache *CacheReport `json:"cache,omitempty"`
}

// CacheReport is the node's image cache in its up event: whether it has a
// cache SSD and the sha256 of each cached root image.
type CacheReport struct {
	Disk   bool     `json:"disk"`
	Images []string `json:"images,omitempty"`
}

// Stages of the boot contract.
const (
	StageNetwork    = "network"
	StageDisk       = "disk"
	StageDownload   = "download"
	StageVerify     = "verify"
	StageMount      = "mount"
	StageSwitchRoot = "switch_root"
	StageUp         = "up"
	StageError      = "error"
)

// Reporter posts events to <server>/events and echoes them on the console.
// Posting is best effort with a short timeout: the boot never waits on the
// event endpoint for longer than that.
type Reporter struct {
	Server  string // base URL; empty disables posting
	Node    string
	MAC     string
	Image   string
	Console io.Writer // where every event is printed; nil for none
	Timeout time.Duration
	// Hold keeps events in memory (up to maxHeld) until SetSigner: the
	// server records only events signed by the node's enrolled key.
	Hold   bool
	signer *nodeauth.Client
	held   []Event
	client *http.Client
}

// maxHeld bounds the events kept while the node waits for its key.
const maxHeld = 64

// SetSigner makes every later event signed by c and sends the held ones.
func (r *Reporter) SetSigner(ctx context.Context, c *nodeauth.Client) {
	r.signer, r.Hold = c, false
	held := r.held
	r.held = nil
	for _, ev := range held {
		if err := r.Post(ctx, ev); err != nil && r.Console != nil {
			fmt.Fprintf(r.Console, "herd: (held event not delivered: %v)\n", err)
		}
	}
}

// Drop discards held events and stops posting: the node has no enrolled
// key, so the server would not record them.
func (r *Reporter) Drop() {
	r.held, r.Hold, r.Server = nil, false, ""
}

// Report prints ev on the console and posts it; a failed post is printed too
// but never returned, because events must not stop a boot.
func (r *Reporter) Report(ctx context.Context, stage string, percent int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	ev := Event{Node: r.Node, MAC: r.MAC, Stage: stage, Percent: percent, Message: msg, Image: r.Image, Time: time.Now().UTC()}
	if r.Console != nil {
		if stage == StageDownload && percent > 0 {
			fmt.Fprintf(r.Console, "herd: [%s %d%%] %s\n", stage, percent, msg)
		} else {
			fmt.Fprintf(r.Console, "herd: [%s] %s\n", stage, msg)
		}
	}
	if err := r.Post(ctx, ev); err != nil && r.Console != nil {
		fmt.Fprintf(r.Console, "herd: (event not delivered: %v)\n", err)
	}
}

// Post sends one event as JSON; it gives up after r.Timeout (default 2 s).
func (r *Reporter) Post(ctx context.Context, ev Event) error {
	if r.Server == "" {
		return nil
	}
	if ev.Node == "" {
		ev.Node = r.Node
	}
	if ev.MAC == "" {
		ev.MAC = r.MAC
	}
	if ev.Image == "" {
		ev.Image = r.Image
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if r.signer == nil && r.Hold {
		if len(r.held) >= maxHeld {
			r.held = r.held[1:]
		}
		r.held = append(r.held, ev)
		return nil
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	to := r.Timeout
	if to <= 0 {
		to = 2 * time.Second
	}
	if r.client == nil {
		r.client = &http.Client{Timeout: to}
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	if r.signer != nil {
		s := *r.signer
		s.HTTP = r.client
		return s.Event(ctx, body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.Server+"/events", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("event request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("post %s/events: %w", r.Server, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post %s/events: %s", r.Server, resp.Status)
	}
	return nil
}

// PrimaryMAC returns the hardware address of the first up, non-loopback
// interface that has an IPv4 address (the one ip=dhcp configured).
func PrimaryMAC() (mac, name string) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", ""
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagUp == 0 || len(ifc.HardwareAddr) == 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return ifc.HardwareAddr.String(), ifc.Name
			}
		}
	}
	return "", ""
}
