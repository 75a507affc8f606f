//go:build race

package main

// The command under test is built with the race detector too.
func init() { raceBuild = true }
