package nodeauth

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Client is the node side of the protocol: each call fetches a challenge,
// signs the request with Key and posts it to Base (herd.server).
type Client struct {
	Base string // server base URL, no trailing slash
	Node string
	Key  crypto.Signer
	HTTP *http.Client
}

// Challenge is the server's answer to GET /nodes/<name>/challenge.
type Challenge struct {
	Nonce string `json:"nonce"`
}

// EnrollAnswer is the server's answer to an enrollment request.
type EnrollAnswer struct {
	Status      Status `json:"status"`
	Fingerprint string `json:"fingerprint"`
}

// ErrUnknownNode is wrapped when the server has no such node (404 on the
// challenge): retrying will not help until the admin adds it.
var ErrUnknownNode = errors.New("the server does not know this node")

// ErrRefused is wrapped when the server answers 403 (key not enrolled).
var ErrRefused = errors.New("refused by the server")

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// Nonce fetches a fresh challenge for the node.
func (c *Client) Nonce(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/nodes/"+c.Node+"/challenge", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return "", fmt.Errorf("challenge: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusNotFound {
		return "", fmt.Errorf("challenge: %w: %s", ErrUnknownNode, strings.TrimSpace(string(b)))
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("challenge: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var ch Challenge
	if err := json.Unmarshal(b, &ch); err != nil || ch.Nonce == "" {
		return "", fmt.Errorf("challenge: bad answer %q", b)
	}
	return ch.Nonce, nil
}

// Post signs body for purpose with a fresh nonce and posts it to path; it
// returns the answer's body, or an error for any status but 2xx.
func (c *Client) Post(ctx context.Context, path, purpose string, body, x25519Pub []byte) ([]byte, *Auth, error) {
	nonce, err := c.Nonce(ctx)
	if err != nil {
		return nil, nil, err
	}
	a, err := Sign(c.Key, c.Node, purpose, nonce, body, x25519Pub)
	if err != nil {
		return nil, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Base+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set(Header, a.Encode())
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, a, fmt.Errorf("%s: %w", path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, a, fmt.Errorf("%s: %w", path, err)
	}
	if resp.StatusCode == http.StatusForbidden {
		return nil, a, fmt.Errorf("%s: %w: %s", path, ErrRefused, strings.TrimSpace(string(out)))
	}
	if resp.StatusCode/100 != 2 {
		return nil, a, fmt.Errorf("%s: %s: %s", path, resp.Status, strings.TrimSpace(string(out)))
	}
	return out, a, nil
}

// Enroll presents the node's key; the answer says enrolled or pending.
func (c *Client) Enroll(ctx context.Context) (*EnrollAnswer, error) {
	b, _, err := c.Post(ctx, "/nodes/"+c.Node+"/enroll", PurposeEnroll, []byte("{}"), nil)
	if err != nil {
		return nil, err
	}
	var ans EnrollAnswer
	if err := json.Unmarshal(b, &ans); err != nil {
		return nil, fmt.Errorf("enroll: bad answer: %w", err)
	}
	return &ans, nil
}

// Overlay fetches the node's runtime overlay (a newc cpio), sealed to a
// fresh X25519 key made for this request, and opens it.
func (c *Client) Overlay(ctx context.Context) ([]byte, error) {
	sk, err := NewSealKey()
	if err != nil {
		return nil, err
	}
	sealed, a, err := c.Post(ctx, "/nodes/"+c.Node+"/overlay", PurposeOverlay, []byte("{}"), sk.PublicKey().Bytes())
	if err != nil {
		return nil, err
	}
	return Open(sk, SealContext(c.Node, a.Nonce), sealed)
}

// Event posts one boot event (its JSON) signed.
func (c *Client) Event(ctx context.Context, event []byte) error {
	_, _, err := c.Post(ctx, "/events", PurposeEvent, event, nil)
	return err
}

// Status posts one status report (its JSON) signed to /nodes/<name>/status
// and returns the server's answer (a nodestatus.Reply as JSON).
func (c *Client) Status(ctx context.Context, report []byte) ([]byte, error) {
	out, _, err := c.Post(ctx, "/nodes/"+c.Node+"/status", PurposeStatus, report, nil)
	return out, err
}
