package nodeauth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrNoncesFull is returned by Issue when the total bound is reached and
// nothing has expired: the caller answers 503 and the node retries.
var ErrNoncesFull = errors.New("too many outstanding challenges")

// Nonces hands out single-use challenges. Memory is bounded: at most
// PerNode outstanding per node (issuing another drops that node's oldest)
// and Total overall, whatever a flood of challenge requests does.
type Nonces struct {
	TTL     time.Duration
	PerNode int
	Total   int
	Now     func() time.Time

	mu     sync.Mutex
	m      map[string]nonceEntry
	byNode map[string][]string // issue order
}

type nonceEntry struct {
	node    string
	expires time.Time
}

// NewNonces makes a store; zero values get defaults (60 s, 4 per node, 4096).
func NewNonces(ttl time.Duration, perNode, total int) *Nonces {
	if ttl <= 0 {
		ttl = time.Minute
	}
	if perNode <= 0 {
		perNode = 4
	}
	if total <= 0 {
		total = 4096
	}
	return &Nonces{TTL: ttl, PerNode: perNode, Total: total, Now: time.Now,
		m: map[string]nonceEntry{}, byNode: map[string][]string{}}
}

// Len is the number of outstanding nonces (for tests and metrics).
func (n *Nonces) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.m)
}

// Issue makes a fresh nonce for node.
func (n *Nonces) Issue(node string) (string, time.Time, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("nonce: %w", err)
	}
	nonce := base64.RawURLEncoding.EncodeToString(b[:])
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.Now()
	q := n.byNode[node]
	for len(q) > 0 && len(q) >= n.PerNode {
		delete(n.m, q[0])
		q = q[1:]
	}
	if len(n.m) >= n.Total {
		n.sweepLocked(now)
		if len(n.m) >= n.Total {
			n.byNode[node] = q
			return "", time.Time{}, ErrNoncesFull
		}
		q = n.byNode[node]
	}
	exp := now.Add(n.TTL)
	n.m[nonce] = nonceEntry{node: node, expires: exp}
	n.byNode[node] = append(q, nonce)
	return nonce, exp, nil
}

func (n *Nonces) sweepLocked(now time.Time) {
	for k, e := range n.m {
		if !now.Before(e.expires) {
			delete(n.m, k)
		}
	}
	for node, q := range n.byNode {
		kept := q[:0]
		for _, k := range q {
			if _, ok := n.m[k]; ok {
				kept = append(kept, k)
			}
		}
		if len(kept) == 0 {
			delete(n.byNode, node)
		} else {
			n.byNode[node] = kept
		}
	}
}

// Consume spends nonce for node: it must have been issued for that node,
// not expired and not spent; it can never be used again either way.
func (n *Nonces) Consume(node, nonce string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.m[nonce]
	if !ok {
		return fmt.Errorf("%w: nonce unknown, spent or expired (replay?)", ErrBadAuth)
	}
	if e.node != node {
		return fmt.Errorf("%w: nonce was issued for another node", ErrBadAuth)
	}
	delete(n.m, nonce)
	q := n.byNode[node]
	for i, k := range q {
		if k == nonce {
			n.byNode[node] = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(n.byNode[node]) == 0 {
		delete(n.byNode, node)
	}
	if !n.Now().Before(e.expires) {
		return fmt.Errorf("%w: nonce expired", ErrBadAuth)
	}
	return nil
}
