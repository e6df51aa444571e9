#!/usr/bin/env bash
# Runs each fuzz target for a short time (default 20s each): go test -fuzz
# takes one target per run, so walk them all.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-20s}
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
	pkg=./$(dirname "${f#./}")
	for t in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //'); do
		echo "== $pkg $t ($dur)"
		go test -run '^$' -fuzz "^$t\$" -fuzztime "$dur" "$pkg"
	done
done
