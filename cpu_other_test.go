//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package vaultudp

import "time"

// processCPU says the CPU time is not known here.
func processCPU() (time.Duration, bool) { return 0, false }
