package testlab

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestConsoleExpectAdvancesAndTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	c := NewConsole(path)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	go func() {
		f.WriteString("\x1b[2JSeaBIOS\r\nubuntu login: ")
		time.Sleep(300 * time.Millisecond)
		f.WriteString("\r\nreboot\r\ngpu01 login: ")
	}()
	login := regexp.MustCompile(`(\S+) login: `)
	m, err := c.Expect(context.Background(), login, 10*time.Second)
	if err != nil || m[1] != "ubuntu" {
		t.Fatalf("first match %q, %v", m, err)
	}
	m, err = c.Expect(context.Background(), login, 10*time.Second)
	if err != nil || m[1] != "gpu01" {
		t.Fatalf("second match must be the new prompt, got %q, %v", m, err)
	}
	_, err = c.Expect(context.Background(), login, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "gpu01 login:") {
		t.Fatalf("a timeout must name the log and show its tail, got %v", err)
	}
	if strings.Contains(c.Tail(5), "\x1b") || strings.Contains(c.Tail(5), "\r") {
		t.Fatalf("tail not cleaned: %q", c.Tail(5))
	}
	c.Mark()
	f.WriteString("\r\nlate login: ")
	if m, err := c.Expect(context.Background(), login, 5*time.Second); err != nil || m[1] != "late" {
		t.Fatalf("after Mark: %q, %v", m, err)
	}
}
