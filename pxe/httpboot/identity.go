package httpboot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
	"golang.org/x/sys/unix"
)

// Node identity routes (HACKING.md "Boot path v2", Identity):
//
//	GET  /nodes/<name>/challenge  single-use nonce for the node
//	POST /nodes/<name>/enroll     present the node key (enrolled or pending)
//	POST /nodes/<name>/overlay    the runtime overlay, sealed to the request's X25519 key
//
// Source address and MAC prove nothing; only a signature by the enrolled
// key over a fresh nonce does.

// maxAuthBody bounds the body of a signed request read into memory.
const maxAuthBody = 64 << 10

// ParseNodePath splits "/nodes/<name>/<action>" and checks the name.
func ParseNodePath(p string) (name, action string, err error) {
	rest, ok := strings.CutPrefix(p, "/nodes/")
	if !ok {
		return "", "", fmt.Errorf("%q is not under /nodes/", p)
	}
	name, action, ok = strings.Cut(rest, "/")
	if !ok || !site.ValidNodeName(name) || strings.Contains(action, "/") {
		return "", "", fmt.Errorf("%q is not /nodes/<name>/<action>", p)
	}
	return name, action, nil
}

func (s *Server) serveNode(w http.ResponseWriter, r *http.Request) string {
	name, action, err := ParseNodePath(r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return "nodes"
	}
	w.Header().Set("Cache-Control", "no-store")
	cfg := s.cfg.Load()
	node, ok := cfg.NodeByName(name)
	switch action {
	case "challenge", "enroll", "overlay", "status":
	case "overlay.cpio":
		// The address-checked overlay of herd before node identity: gone.
		http.Error(w, "gone: the runtime overlay is only sealed to an enrolled node key (POST /nodes/<name>/overlay)", http.StatusGone)
		return "overlay"
	default:
		http.NotFound(w, r)
		return "nodes"
	}
	if !ok {
		// No nonce or file is ever made for a name herd.yaml lacks.
		http.Error(w, "unknown node "+name, http.StatusNotFound)
		return action
	}
	if action == "challenge" {
		if !onlyGet(w, r) {
			return action
		}
		nonce, exp, err := s.nonces.Issue(name)
		if errors.Is(err, nodeauth.ErrNoncesFull) {
			w.Header().Set("Retry-After", "5")
			http.Error(w, "too many outstanding challenges; retry", http.StatusServiceUnavailable)
			return action
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return action
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"nonce": nonce, "expires": exp.UTC()})
		return action
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return action
	}
	limit := int64(maxAuthBody)
	if action == "status" {
		limit = nodestatus.MaxBody
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		http.Error(w, "request body: "+err.Error(), http.StatusRequestEntityTooLarge)
		return action
	}
	switch action {
	case "enroll":
		s.serveEnroll(w, r, node, body)
	case "status":
		s.serveStatus(w, r, node, body)
	default:
		s.serveSealedOverlay(w, r, cfg, node, body)
	}
	return action
}

// authenticate checks a signed request for node and purpose: signature,
// enrolled key (unless purpose is enroll, where any key proves itself),
// then the nonce is spent. It answers the refusal itself and returns nil.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, node, purpose string, body []byte) *nodeauth.Auth {
	from := remoteIP(r)
	refuse := func(code int, why string) *nodeauth.Auth {
		s.auth.WithLabelValues(purpose, "refused").Inc()
		s.log.Warn("node authentication refused", "node", node, "purpose", purpose, "remote", from, "why", why)
		http.Error(w, "forbidden: "+why, code)
		return nil
	}
	a, err := nodeauth.Decode(r.Header.Get(nodeauth.Header))
	if err != nil {
		return refuse(http.StatusForbidden, err.Error())
	}
	key, err := a.Verify(node, purpose, body)
	if err != nil {
		return refuse(http.StatusForbidden, err.Error())
	}
	if purpose != nodeauth.PurposeEnroll {
		enrolled, err := s.registry.Enrolled(node)
		if err != nil {
			s.log.Error("read enrolled key", "node", node, "err", err)
			http.Error(w, "cannot read the node's enrollment; see the server log", http.StatusInternalServerError)
			return nil
		}
		if enrolled == nil {
			return refuse(http.StatusForbidden, "node "+node+" has no enrolled key (herd node approve "+node+")")
		}
		if !nodeauth.SameKey(enrolled, key) {
			return refuse(http.StatusForbidden, "key "+nodeauth.Fingerprint(key)+" is not "+node+"'s enrolled key")
		}
	}
	if err := s.nonces.Consume(node, a.Nonce); err != nil {
		return refuse(http.StatusForbidden, err.Error())
	}
	s.auth.WithLabelValues(purpose, "ok").Inc()
	return a
}

func (s *Server) serveEnroll(w http.ResponseWriter, r *http.Request, node *site.Node, body []byte) {
	a := s.authenticate(w, r, node.Name, nodeauth.PurposeEnroll, body)
	if a == nil {
		return
	}
	key, _ := nodeauth.ParsePublic(a.Key)
	fp := nodeauth.Fingerprint(key)
	from := remoteIP(r)
	st, err := s.registry.Present(node.Name, key, from, node.InsecureRAMIdentity, s.opt.Now())
	if err != nil {
		s.log.Error("enrollment", "node", node.Name, "err", err)
		http.Error(w, "cannot record the enrollment; see the server log", http.StatusInternalServerError)
		return
	}
	if st == nodeauth.StatusPending {
		s.log.Warn("node key pending approval", "node", node.Name, "fingerprint", fp, "remote", from,
			"approve", "herd node approve "+node.Name+" --fingerprint "+fp)
	} else {
		s.log.Info("node key enrolled", "node", node.Name, "fingerprint", fp, "remote", from, "insecure_ram_identity", node.InsecureRAMIdentity)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(nodeauth.EnrollAnswer{Status: st, Fingerprint: fp})
}

func (s *Server) serveSealedOverlay(w http.ResponseWriter, r *http.Request, cfg *site.Config, node *site.Node, body []byte) {
	a := s.authenticate(w, r, node.Name, nodeauth.PurposeOverlay, body)
	if a == nil {
		return
	}
	data, err := s.buildOverlay(cfg, node)
	if err != nil {
		s.log.Error("build runtime overlay", "node", node.Name, "err", err)
		http.Error(w, "cannot build the runtime overlay; see the server log", http.StatusInternalServerError)
		return
	}
	x, _ := a.X25519Key()
	sealed, err := nodeauth.Seal(x, nodeauth.SealContext(node.Name, a.Nonce), data)
	if err != nil {
		s.log.Error("seal runtime overlay", "node", node.Name, "err", err)
		http.Error(w, "cannot seal the runtime overlay", http.StatusInternalServerError)
		return
	}
	s.log.Info("runtime overlay sealed to the node's key", "node", node.Name, "remote", remoteIP(r), "bytes", len(sealed))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(sealed)))
	w.Write(sealed)
}

func (s *Server) serveEvent(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAuthBody))
	if err != nil {
		http.Error(w, "request body: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	var e inventory.Event
	if err := json.Unmarshal(body, &e); err != nil {
		http.Error(w, "bad event JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := e.Validate(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	from := remoteIP(r)
	cfg := s.cfg.Load()
	node, ok := cfg.NodeByName(e.Node)
	if !ok {
		node, ok = cfg.NodeByMAC(e.MAC)
	}
	if r.Header.Get(nodeauth.Header) == "" {
		// Unsigned: never recorded. Refused outright when it claims an
		// enrolled node (the node itself always signs).
		if ok {
			if k, _ := s.registry.Enrolled(node.Name); k != nil {
				s.auth.WithLabelValues(nodeauth.PurposeEvent, "refused").Inc()
				s.log.Warn("unsigned event for an enrolled node refused", "node", node.Name, "stage", e.Stage, "remote", from)
				http.Error(w, "forbidden: "+node.Name+" is enrolled; its events must be signed by its key", http.StatusForbidden)
				return
			}
		}
		s.log.Info("unauthenticated boot event (logged, not recorded)", "node", e.Node, "mac", e.MAC, "stage", e.Stage,
			"message", e.Message, "remote", from)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if !ok || node.Name != e.Node {
		http.Error(w, "forbidden: event names no node of herd.yaml", http.StatusForbidden)
		return
	}
	if s.authenticate(w, r, node.Name, nodeauth.PurposeEvent, body) == nil {
		return
	}
	// The inventory is keyed by MAC: a node speaks only for its own record.
	e.MAC = node.MAC
	if err := s.opt.Inventory.RecordEvent(e, from, s.opt.Now()); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.events.WithLabelValues(e.Stage).Inc()
	s.log.Info("boot event", "node", e.Node, "mac", e.MAC, "stage", e.Stage, "percent", e.Percent,
		"message", e.Message, "image", e.Image, "remote", from)
	w.WriteHeader(http.StatusNoContent)
}

// ForgetNode removes a node's identity from the state directory: its
// enrolled and pending keys, its SSH host keys and machine-id. A node added
// again under the name starts with fresh secrets and must enroll again.
func ForgetNode(stateDir, name string) error {
	if !site.ValidNodeName(name) {
		return fmt.Errorf("forget: %q is not a node name", name)
	}
	if err := nodeauth.OpenRegistry(stateDir).Forget(name); err != nil {
		return err
	}
	secretsMu.Lock()
	defer secretsMu.Unlock()
	// A running herd serve (another process) may be writing this node's
	// secrets right now (its start-up pregeneration, a first boot): a
	// RemoveAll racing its temp files fails with "directory not empty".
	// Renaming the directory aside first is atomic; a writer's later
	// create under the old path fails, and the aside copy is ours alone.
	dir := filepath.Join(stateDir, "nodes", name)
	aside, err := os.MkdirTemp(filepath.Dir(dir), ".forget-"+name+"-")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // no nodes directory: nothing to forget
		}
		return fmt.Errorf("forget %s: %w", name, err)
	}
	// rename(2) replaces an empty directory, so the aside name is unique
	// (os.Rename refuses any existing directory; the syscall does not).
	if err := unix.Rename(dir, aside); err != nil {
		os.Remove(aside)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("forget %s: rename %s: %w", name, dir, err)
	}
	// A create whose path lookup finished before the rename can still land
	// in the aside directory: one such straggler fails a RemoveAll once.
	for try := 0; ; try++ {
		err := os.RemoveAll(aside)
		if err == nil {
			return nil
		}
		if try == 4 {
			return fmt.Errorf("forget %s: %w", name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nonceTTL is how long a challenge stays valid: a node signs and posts at
// once, so a minute covers a slow link and a replay later finds it spent.
const nonceTTL = time.Minute
