// Package solo holds the end-to-end tests that each boot a small lab of
// their own rather than join TestLab's: the storage network, Secure Boot in
// both modes and `herd vm run` (`herd image test`'s test, which boots its
// own lab too, runs after TestLab in package qemutests). They live apart from
// package qemutests so that go test runs them beside TestLab (the Makefile
// names this package right after the long ones), in the CPU TestLab's
// rollouts leave idle.
package solo

const (
	alicePassword = "Wonder-Land-2026"
	// defaultRecipe is the image the tests boot (relative to this package).
	defaultRecipe = "../../recipes/ubuntu-noble-gpu.yaml"
)
