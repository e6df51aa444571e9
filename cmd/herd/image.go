package main

import (
	"github.com/spf13/cobra"
)

// imageCmd is the parent of every `herd image` subcommand; image_build.go
// adds `build` to it.
var imageCmd = &cobra.Command{
	Use:   "image",
	Short: "Build, list, inspect, promote and garbage-collect node images",
}

func init() {
	root.AddCommand(imageCmd)
}
