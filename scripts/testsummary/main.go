// Command testsummary reads `go test -json` on stdin and writes what a plain
// `go test` prints (each package's closing line, the output of failed tests)
// followed by a summary: tests passed, failed and skipped, every skip with
// its reason, prerequisite skips counted apart from deliberate ones
// (reasons starting "deliberate: ", see internal/testenv), and the slowest
// tests and subtests (where the suite's wall time goes). With -ci it exits
// 1 when any test skipped for a missing prerequisite. Lines that are not
// JSON (build errors) pass through unchanged. Used by `make test`.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64 // seconds, on pass, fail and skip
}

// timing is how long one test or subtest ran.
type timing struct {
	Test    string
	Elapsed float64
}

// skip is one skipped test and why.
type skip struct {
	Test, Reason string
	Deliberate   bool
}

// Summary is what testsummary counted. Failed includes NoResult: tests that
// started but never ended, because their test binary died (a -timeout panic,
// a crash) before they did.
type Summary struct {
	Passed, Failed int
	Skips          []skip
	FailedPkgs     []string
	NoResult       []string
	Timings        []timing // every test and subtest that passed or failed
}

// slowest is how many of the longest tests the summary lists, and
// slowMin the shortest time (seconds) one must take to be listed.
const (
	slowest = 20
	slowMin = 30
)

// noResultTail is how many of an unfinished test's output lines are printed
// (tailAround).
const noResultTail = 60

// logLine is a t.Log/t.Skip line: "    file_test.go:12: message".
var logLine = regexp.MustCompile(`^\s+\S+\.go:\d+: (.*)$`)

const deliberatePrefix = "deliberate: " // internal/testenv.DeliberatePrefix

// Run copies the plain go test output of in to out and returns the counts.
func Run(in io.Reader, out io.Writer) (*Summary, error) {
	sum := &Summary{}
	buf := map[string][]string{} // package/test → output lines
	var running []event          // tests started, in order, until they end
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		var e event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil {
			fmt.Fprintln(out, line)
			continue
		}
		key := e.Package + "/" + e.Test
		if e.Test != "" {
			switch e.Action {
			case "run":
				running = append(running, e)
			case "pass", "fail", "skip":
				if e.Action != "skip" {
					sum.Timings = append(sum.Timings, timing{e.Package + "." + e.Test, e.Elapsed})
				}
				for i, r := range running {
					if r.Package == e.Package && r.Test == e.Test {
						running = append(running[:i], running[i+1:]...)
						break
					}
				}
			}
		}
		switch e.Action {
		case "build-output": // compiler errors (go 1.24+ reports them as JSON)
			fmt.Fprint(out, e.Output)
		case "output":
			if e.Test == "" {
				// Package-level lines: "ok", "FAIL", "PASS", build output.
				if !strings.HasPrefix(e.Output, "=== ") && e.Output != "PASS\n" {
					fmt.Fprint(out, e.Output)
				}
				continue
			}
			buf[key] = append(buf[key], e.Output)
		case "pass":
			if e.Test != "" {
				sum.Passed++
			}
			delete(buf, key)
		case "fail":
			if e.Test == "" {
				sum.FailedPkgs = append(sum.FailedPkgs, e.Package)
				continue
			}
			sum.Failed++
			for _, o := range buf[key] {
				if !strings.HasPrefix(o, "=== ") {
					fmt.Fprint(out, o)
				}
			}
			delete(buf, key)
		case "skip":
			if e.Test == "" {
				continue // a package without tests
			}
			reason := "(no reason given)"
			for _, o := range buf[key] {
				if m := logLine.FindStringSubmatch(strings.TrimRight(o, "\n")); m != nil {
					reason = m[1]
				}
			}
			sum.Skips = append(sum.Skips, skip{Test: e.Package + "." + e.Test, Reason: reason,
				Deliberate: strings.HasPrefix(reason, deliberatePrefix)})
			delete(buf, key)
		}
	}
	// A test that never ended: its binary died under it. Its output holds
	// why (go test's "panic: test timed out after …" goes to the tests
	// running then), so it is printed, not dropped.
	for _, r := range running {
		key := r.Package + "/" + r.Test
		sum.Failed++
		sum.NoResult = append(sum.NoResult, r.Package+"."+r.Test)
		fmt.Fprintf(out, "--- NO RESULT: %s (the test binary ended before the test did: a -timeout panic or a crash)\n", r.Test)
		for _, o := range tailAround(buf[key]) {
			if !strings.HasPrefix(o, "=== ") {
				fmt.Fprint(out, o)
			}
		}
	}
	return sum, sc.Err()
}

// tailAround returns the lines around a panic (a third of noResultTail
// before it, the rest after: the timeout, the tests running then and the top
// of the goroutine dump), else the last noResultTail lines.
func tailAround(lines []string) []string {
	for i, l := range lines {
		if strings.HasPrefix(l, "panic: ") {
			from := max(0, i-noResultTail/3)
			return lines[from:min(len(lines), from+noResultTail)]
		}
	}
	return lines[max(0, len(lines)-noResultTail):]
}

// Print writes the summary block; it returns the number of prerequisite skips.
func (s *Summary) Print(w io.Writer) int {
	prereq := 0
	for _, k := range s.Skips {
		if !k.Deliberate {
			prereq++
		}
	}
	fmt.Fprintf(w, "\n== test summary: %d passed, %d failed, %d skipped (%d for a missing prerequisite, %d deliberate)\n",
		s.Passed, s.Failed, len(s.Skips), prereq, len(s.Skips)-prereq)
	sort.Slice(s.Skips, func(i, j int) bool {
		if s.Skips[i].Deliberate != s.Skips[j].Deliberate {
			return !s.Skips[i].Deliberate
		}
		return s.Skips[i].Test < s.Skips[j].Test
	})
	for _, k := range s.Skips {
		kind := "PREREQUISITE"
		if k.Deliberate {
			kind = "deliberate"
		}
		fmt.Fprintf(w, "SKIP %s [%s]: %s\n", k.Test, kind, k.Reason)
	}
	slow := slices.Clone(s.Timings)
	sort.SliceStable(slow, func(i, j int) bool { return slow[i].Elapsed > slow[j].Elapsed })
	for i, t := range slow {
		if i == slowest || t.Elapsed < slowMin {
			break
		}
		fmt.Fprintf(w, "SLOW %6.0fs %s\n", t.Elapsed, t.Test)
	}
	for _, t := range s.NoResult {
		fmt.Fprintf(w, "NO RESULT %s (counted as failed)\n", t)
	}
	for _, p := range s.FailedPkgs {
		fmt.Fprintf(w, "FAILED PACKAGE %s\n", p)
	}
	// The plain closing line CI's reader counts in any language.
	fmt.Fprintf(w, "summary: %d passed, %d failed, %d skipped\n", s.Passed, s.Failed, len(s.Skips))
	return prereq
}

func main() {
	ci := flag.Bool("ci", os.Getenv("CI") == "true", "exit 1 when a test skipped for a missing prerequisite")
	flag.Parse()
	sum, err := Run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if n := sum.Print(os.Stdout); n > 0 && *ci {
		fmt.Printf("FAIL: %d tests skipped for a missing prerequisite under CI\n", n)
		os.Exit(1)
	}
}
