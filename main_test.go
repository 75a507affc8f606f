package vaultudp

import (
	"flag"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the test binary if any goroutine is still running once
// every test has finished: every Conn a test opened must have been closed,
// and Close must have waited for every goroutine the Conn started.
//
// It also lifts Go's limit on parallel tests: they take turns by
// helpers_test.go's parallel, heavy and alone, and one waiting for its
// turn would hold one of Go's places, which the parallel subtests of a
// test that runs may need. An explicit -parallel N limits the waiting
// tests that run at once instead (lightParallel).
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.parallel"); f != nil {
		flag.Visit(func(g *flag.Flag) {
			if g == f {
				if n, err := strconv.Atoi(f.Value.String()); err == nil && n > 0 {
					light = make(chan struct{}, n)
				}
			}
		})
		f.Value.Set(strconv.Itoa(1 << 10))
	}
	goleak.VerifyTestMain(m)
}
