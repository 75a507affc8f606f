package vaultudp

import (
	"io"
	"runtime"
	"sync"
	"testing"
	"time"
)

// The helpers every test of the package shares: how a test runs beside
// the others, makes its Conns, reads with a deadline, polls a state and
// looks at a peer's state.

// Running beside each other. Most tests wait (on sockets, on timers) far
// more than they compute, so they run in parallel (parallel). Those that
// load the cores run one at a time, beside the waiting ones (heavy).
// Those that measure the process (its heap, GOMAXPROCS) or a time under
// load run alone (alone). Those that count allocations or look at every
// goroutine's stack do not call any of these: Go runs them first, before
// any parallel test starts.
//
// Go's own limit on parallel tests (-parallel) is lifted in TestMain: a
// test waiting here for its turn would hold one of its places, and a test
// whose parallel subtests need places would never end. The limit is
// lightParallel instead.
var (
	world    sync.RWMutex // read by every parallel test, written by alone
	cpuHeavy sync.Mutex   // held by the heavy test that runs
	light    = make(chan struct{}, lightParallel)
)

// lightParallel is how many waiting tests run at once.
const lightParallel = 32

// parallel runs t beside the other parallel tests.
func parallel(t *testing.T) {
	t.Helper()
	t.Parallel()
	light <- struct{}{} // before world: a test holding world never waits
	world.RLock()
	t.Cleanup(func() {
		world.RUnlock()
		<-light
	})
}

// heavy runs t beside the waiting tests, one heavy test at a time.
func heavy(t *testing.T) {
	t.Helper()
	t.Parallel()
	cpuHeavy.Lock()
	world.RLock()
	t.Cleanup(func() {
		world.RUnlock()
		cpuHeavy.Unlock()
	})
}

// alone runs t while no other test of the package runs, but for the live
// interop test (TestV2InteropReference), whose Go side only waits; the
// heap it starts from is collected, as when it ran first.
func alone(t *testing.T) {
	t.Helper()
	t.Parallel()
	world.Lock()
	t.Cleanup(world.Unlock)
	runtime.GC()
}

// pollUntil polls ok until it holds, at most d: the bounded wait on a
// state that has no channel to wait on. It reports whether ok held.
func pollUntil(d time.Duration, ok func() bool) bool {
	_, held := waitFor(d, ok)
	return held
}

// closeAtEnd closes c when t ends, and then forgets it. Go keeps a
// parallel test's cleanups until the whole run ends (it pops them without
// clearing), so a cleanup holding a Conn would keep its buffers in the
// heap that the tests that run alone measure.
func closeAtEnd(t testing.TB, c io.Closer) {
	t.Cleanup(func() {
		c.Close()
		c = nil
	})
}
