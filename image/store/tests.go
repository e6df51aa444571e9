package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// TestResult is the outcome of `herd image test` for one image, kept so
// that `herd image promote --require-test` can refuse untested images.
type TestResult struct {
	Image   string    `json:"image"`
	Passed  bool      `json:"passed"`
	Time    time.Time `json:"time"`
	Summary string    `json:"summary,omitempty"`
	// Log is the path of the full test log, if one was kept.
	Log string `json:"log,omitempty"`
}

func (s *Store) testPath(id string) string {
	return filepath.Join(s.state, "tests", id+".json")
}

// RecordTest stores a test result for the image id (ID or unique prefix),
// replacing any earlier one atomically.
func (s *Store) RecordTest(id string, r TestResult) error {
	im, err := s.Get(id)
	if err != nil {
		return fmt.Errorf("record test: %w", err)
	}
	r.Image = im.ID
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("record test: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.testPath(im.ID)), 0o755); err != nil {
		return fmt.Errorf("record test: %w", err)
	}
	if err := atomicfile.WriteFile(s.testPath(im.ID), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("record test for %s: %w", im.ID, err)
	}
	return nil
}

// TestResult returns the recorded test result of the image with the full
// ID id, or nil when it was never tested.
func (s *Store) TestResult(id string) (*TestResult, error) {
	if id == "" || strings.ContainsAny(id, "/\\") || strings.HasPrefix(id, ".") {
		return nil, fmt.Errorf("test result: %q is not an image ID", id)
	}
	data, err := os.ReadFile(s.testPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("test result of %s: %w", id, err)
	}
	var r TestResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", s.testPath(id), err)
	}
	return &r, nil
}
