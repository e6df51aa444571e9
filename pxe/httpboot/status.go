package httpboot

import (
	"encoding/json"
	"net/http"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/site"
)

// serveStatus is POST /nodes/<name>/status: a node's periodic status report
// (fleet/nodestatus.Report), signed by its enrolled key (purpose "status")
// over a fresh nonce. Only then is it decoded, checked and recorded as the
// node's latest report; the answer is Options.StatusReply's Reply (empty
// when none is set). A report naming another node is refused: a node speaks
// only for itself.
func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request, node *site.Node, body []byte) {
	if s.authenticate(w, r, node.Name, nodeauth.PurposeStatus, body) == nil {
		return
	}
	from := remoteIP(r)
	var rep nodestatus.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		http.Error(w, "bad status report JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	if rep.Node != node.Name {
		http.Error(w, "forbidden: the report names node "+rep.Node+", not "+node.Name, http.StatusForbidden)
		return
	}
	if err := rep.Validate(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The inventory is keyed by MAC: the site's MAC for this node.
	if err := s.opt.Inventory.RecordStatus(node.MAC, &rep, from, s.opt.Now()); err != nil {
		s.log.Error("record status report", "node", node.Name, "err", err)
		http.Error(w, "cannot record the report: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.statuses.WithLabelValues(rep.Health.State).Inc()
	s.log.Debug("status report", "node", node.Name, "health", rep.Health.String(), "busy", rep.Busy(), "gpus", len(rep.GPUs), "remote", from)
	var reply nodestatus.Reply
	if f := s.opt.StatusReply; f != nil {
		reply = f(node.Name, &rep)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(reply)
}
