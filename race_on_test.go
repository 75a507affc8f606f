//go:build race

package vaultudp

// raceDetector is set when tests run under -race, which changes
// allocation counts (sync.Pool drops items on purpose).
const raceDetector = true
