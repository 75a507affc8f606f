//go:build race

package vaultudp

// raceEnabled is true when the tests run under the race detector, which
// slows Go code 5 to 10 times (the kernel not at all): the fault and flood
// tests scale their counts down by it (see scaled).
const raceEnabled = true
