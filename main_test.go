package vaultudp

import (
	"flag"
	"runtime"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

// testParallel lifts Go's limit on parallel tests unless -parallel is
// given: the tests take turns by helpers_test.go's parallel, heavy and
// alone, which know which may run beside which (a test waiting for its
// turn would hold one of Go's places).
const testParallel = 1 << 10

// TestMain fails the test binary if any goroutine is still running once
// every test has finished: every Conn a test opened must have been closed,
// and Close must have waited for every goroutine the Conn started.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", strconv.Itoa(max(testParallel, runtime.GOMAXPROCS(0))))
	}
	goleak.VerifyTestMain(m)
}
