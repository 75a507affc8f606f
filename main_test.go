package vaultudp

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the test binary if any goroutine is still running once
// every test has finished: every Conn a test opened must have been closed,
// and Close must have waited for every goroutine the Conn started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
