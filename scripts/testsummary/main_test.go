package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A real `go test -json` run of a throwaway module with a passing, a
// failing, a prerequisite-skipped and a deliberately skipped test.
func TestSummaryOfRealRun(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/s\n\ngo 1.22\n")
	if err := os.Mkdir(filepath.Join(dir, "broken"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("broken/b.go", "package broken\nfunc F() { notDefined() }\n")
	write("broken/b_test.go", "package broken\nimport \"testing\"\nfunc TestB(t *testing.T) {}\n")
	write("s_test.go", `package s
import "testing"
func TestOK(t *testing.T) { t.Log("noise") }
func TestBad(t *testing.T) { t.Fatal("broken thing") }
func TestNeedsRoot(t *testing.T) { t.Skip("prerequisite missing: needs root") }
func TestBench(t *testing.T) { t.Skip("deliberate: benchmark, run by bench/x.sh") }
`)
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOTOOLCHAIN=local")
	js, _ := cmd.Output() // exits 1: TestBad fails
	var out strings.Builder
	sum, err := Run(strings.NewReader(string(js)), &out)
	if err != nil {
		t.Fatal(err)
	}
	var printed strings.Builder
	if n := sum.Print(&printed); n != 1 {
		t.Errorf("prerequisite skips = %d, want 1", n)
	}
	text := out.String() + printed.String()
	t.Log(text)
	for _, want := range []string{
		"broken thing",        // a failed test's output
		"FAIL\texample.com/s", // go test's own closing line
		"1 passed, 1 failed, 2 skipped (1 for a missing prerequisite, 1 deliberate)",
		"SKIP example.com/s.TestNeedsRoot [PREREQUISITE]: prerequisite missing: needs root",
		"SKIP example.com/s.TestBench [deliberate]: deliberate: benchmark, run by bench/x.sh",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "noise") || strings.Contains(text, "=== RUN") {
		t.Errorf("a passing test's log or a RUN line leaked into the plain output")
	}
}

// A real `go test -json -timeout` run whose test outlives the timeout: the
// binary panics and no test ends, which once read "0 failed".
func TestSummaryOfTimedOutRun(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/s\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "s_test.go"), []byte(`package s
import ("testing"; "time")
func TestFast(t *testing.T) {}
func TestSlow(t *testing.T) {
	t.Run("inner", func(t *testing.T) { t.Log("waiting for the node"); time.Sleep(time.Minute) })
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "test", "-json", "-count=1", "-timeout", "3s", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOTOOLCHAIN=local")
	js, _ := cmd.Output()
	var out, printed strings.Builder
	sum, err := Run(strings.NewReader(string(js)), &out)
	if err != nil {
		t.Fatal(err)
	}
	sum.Print(&printed)
	text := out.String() + printed.String()
	t.Log(text)
	for _, want := range []string{
		"--- NO RESULT: TestSlow/inner",
		"test timed out after 3s",
		"waiting for the node",
		"NO RESULT example.com/s.TestSlow (counted as failed)",
		"summary: 1 passed, 2 failed, 0 skipped",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// The summary lists the tests and subtests that took slowMin seconds or
// more, longest first, from the Elapsed of go test's pass and fail events
// (lines as test2json writes them).
func TestSummaryListsSlowTests(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestLab"}
{"Action":"run","Package":"p","Test":"TestLab/rollout"}
{"Action":"pass","Package":"p","Test":"TestLab/rollout","Elapsed":612.5}
{"Action":"run","Package":"p","Test":"TestQuick"}
{"Action":"pass","Package":"p","Test":"TestQuick","Elapsed":2}
{"Action":"run","Package":"q","Test":"TestBoot"}
{"Action":"fail","Package":"q","Test":"TestBoot","Elapsed":95}
{"Action":"pass","Package":"p","Test":"TestLab","Elapsed":4000}
`
	sum, err := Run(strings.NewReader(in), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var printed strings.Builder
	sum.Print(&printed)
	text := printed.String()
	want := "SLOW   4000s p.TestLab\nSLOW    612s p.TestLab/rollout\nSLOW     95s q.TestBoot\n"
	if !strings.Contains(text, want) {
		t.Errorf("summary lacks the slow tests in order:\n%s\nwant:\n%s", text, want)
	}
	if strings.Contains(text, "TestQuick") {
		t.Errorf("a 2 s test is listed as slow:\n%s", text)
	}
}
