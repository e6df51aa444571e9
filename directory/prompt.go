package directory

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"
)

// ReadPassword gets a new password without it ever touching argv: from the
// first line of stdin (fromStdin, for scripts), or by prompting twice without
// echo when stdin is a terminal.
func ReadPassword(stdin *os.File, prompts io.Writer, user string, fromStdin bool) (string, error) {
	if fromStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read the password from stdin: %w", err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", errors.New("--password-stdin: stdin held no password")
		}
		return pw, nil
	}
	fd := int(stdin.Fd())
	if !term.IsTerminal(fd) {
		return "", errors.New("stdin is not a terminal: pass the password on stdin with --password-stdin")
	}
	fmt.Fprintf(prompts, "New password for %s: ", user)
	a, err := term.ReadPassword(fd)
	fmt.Fprintln(prompts)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	fmt.Fprintf(prompts, "Retype new password for %s: ", user)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(prompts)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	if string(a) != string(b) {
		return "", errors.New("the two passwords differ; nothing changed")
	}
	if len(a) == 0 {
		return "", errors.New("empty password refused")
	}
	return string(a), nil
}

// IsTerminal reports whether f is a terminal (for deciding to prompt).
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
