package vaultudp

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
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
// load run alone (alone). Those that count allocations, weigh the heap
// to the MiB or look at every goroutine's stack do not call any of these:
// Go runs them first, before any parallel test starts (the live interop
// test runs beside the alone ones and makes Conns).
//
// Under the race detector every goroutine runs several times slower, and
// the tests whose rules run on real time (short HandshakeTimeouts, retry
// intervals, rates) miss them when they share the cores: there, parallel,
// heavy and alone leave the tests one after the other, as before.
//
// Go's own limit on parallel tests (-parallel) is lifted in TestMain: a
// test waiting here for its turn would hold one of its places, and a test
// whose parallel subtests need places would never end. The limit is
// lightParallel instead (or -parallel, if given).
var (
	world    = newTurns()                         // shared by every parallel test, held alone by alone
	cpuHeavy sync.Mutex                           // held by the heavy test that runs
	light    = make(chan struct{}, lightParallel) // TestMain makes it -parallel's size if given
)

// turns is a readers-writer lock that hands over from writer to writer:
// while a writer waits, no reader starts, so the tests that run alone run
// one after the other, not each after a wave of the others.
// (sync.RWMutex lets the waiting readers in at each writer's Unlock.)
type turns struct {
	mu      sync.Mutex
	changed *sync.Cond
	readers int
	writing bool
	waiting int // writers
}

func newTurns() *turns {
	w := &turns{}
	w.changed = sync.NewCond(&w.mu)
	return w
}

func (w *turns) RLock() {
	w.mu.Lock()
	for w.writing || w.waiting > 0 {
		w.changed.Wait()
	}
	w.readers++
	w.mu.Unlock()
}

func (w *turns) RUnlock() {
	w.mu.Lock()
	w.readers--
	w.changed.Broadcast()
	w.mu.Unlock()
}

func (w *turns) Lock() {
	w.mu.Lock()
	w.waiting++
	for w.writing || w.readers > 0 {
		w.changed.Wait()
	}
	w.waiting--
	w.writing = true
	w.mu.Unlock()
}

func (w *turns) Unlock() {
	w.mu.Lock()
	w.writing = false
	w.changed.Broadcast()
	w.mu.Unlock()
}

// lightParallel is how many waiting tests run at once.
const lightParallel = 16

// parallel runs t beside the other parallel tests.
func parallel(t *testing.T) {
	t.Helper()
	if raceEnabled {
		return // one after the other under -race (see above)
	}
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
	if raceEnabled {
		return // one after the other under -race (see above)
	}
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
	if !raceEnabled { // one after the other under -race (see above)
		t.Parallel()
		world.Lock()
		t.Cleanup(world.Unlock)
	}
	runtime.GC()
}

// ---- Conns ----

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

// waitLong bounds every wait of these tests: nothing on loopback should
// come near it, so reaching it is a failure, not a flake.
const waitLong = 10 * time.Second

// pair returns two Conns on loopback. An IPv6 network skips the test when
// ::1 is not available.
func pair(t testing.TB, network, host string, ca, cb *Config) (*Conn, *Conn) {
	t.Helper()
	if ca == nil {
		ca = &Config{}
	}
	if cb == nil {
		cb = &Config{}
	}
	a := listenT(t, network, net.JoinHostPort(host, "0"), ca)
	b := listenT(t, network, net.JoinHostPort(host, "0"), cb)
	return a, b
}

// listenT listens and closes the Conn when the test ends. It skips the
// test if an IPv6 loopback socket cannot be made.
func listenT(t testing.TB, network, address string, cfg *Config) *Conn {
	t.Helper()
	c, err := Listen(network, address, cfg)
	if err != nil {
		if network == "udp6" || strings.Contains(address, "::1") {
			t.Skipf("IPv6 loopback unavailable: %v", err)
		}
		t.Fatal(err)
	}
	closeAtEnd(t, c)
	return c
}

// fakeListen is listenT with the clock clk.
func fakeListen(t *testing.T, clk *fakeClock, cfg *Config) *Conn {
	t.Helper()
	if cfg == nil {
		cfg = &Config{}
	}
	cfg.clock = clk
	return listenT(t, "udp4", "127.0.0.1:0", cfg)
}

func wrapT(t testing.TB, pc net.PacketConn, cfg *Config) *Conn {
	t.Helper()
	c, err := Wrap(pc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, c)
	return c
}

// restartOn listens again on addr with cfg, skipping the test if the port
// was taken meanwhile.
func restartOn(t *testing.T, addr netip.AddrPort, cfg *Config) *Conn {
	t.Helper()
	c, err := Listen("udp4", addr.String(), cfg)
	if err != nil {
		t.Skipf("cannot listen again on %v: %v", addr, err)
	}
	closeAtEnd(t, c)
	return c
}

// rawUDP returns a plain UDP socket on 127.0.0.1, closed at the end of
// the test: the stranger of the tests, or a relay.
func rawUDP(t testing.TB) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, pc)
	return pc
}

// deadPort returns the address of a UDP socket that was just closed:
// nobody answers there.
func deadPort(t testing.TB, network, host string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket(network, net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, host, err)
	}
	a := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	return a
}

func addrOf(c *Conn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func addrOf2(pc *net.UDPConn) netip.AddrPort {
	return normAddr(pc.LocalAddr().(*net.UDPAddr).AddrPort())
}

func handshakeT(t testing.TB, c *Conn, to netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.Handshake(ctx, to); err != nil {
		t.Fatalf("handshake with %v: %v (stats %+v)", to, err, c.Stats())
	}
}

// pinnedServer returns a server s1 with identity id and a client c
// (Config cc) that pinned it, once c's "before" has reached s1: the
// start of the tests in which the server goes away and comes back on its
// address (restartOn). The test closes s1.
func pinnedServer(t *testing.T, cc *Config) (s1, c *Conn, id ed25519.PrivateKey) {
	t.Helper()
	id = GenerateIdentity()
	s1, err := Listen("udp4", "127.0.0.1:0", &Config{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	c = listenT(t, "udp4", "127.0.0.1:0", cc)
	if err := c.AddPeer(PeerConfig{Addr: addrOf(s1), PublicKey: id.Public().(ed25519.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	writeUntilRead(t, c, s1, "before")
	return s1, c, id
}

// ---- Reading with a deadline ----

func readWithin(t testing.TB, c *Conn, d time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("read: %v (stats %+v)", err, c.Stats())
	}
	return buf[:n], from
}

// expectRead reads one datagram and fails unless it is want from from.
func expectRead(t testing.TB, c *Conn, want string, from netip.AddrPort) {
	t.Helper()
	got, src := readWithin(t, c, waitLong)
	if string(got) != want || src != from {
		t.Fatalf("read %q from %v, want %q from %v", trunc(got), src, trunc([]byte(want)), from)
	}
}

// expectNothing fails if c has a datagram for ReadFrom within d. Callers
// make sure first that whatever might be delivered has been processed
// (quiesce, strangerBarrier, a later datagram on the same path), so d
// only needs to outlast a select.
func expectNothing(t testing.TB, c *Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err == nil {
		t.Fatalf("read %q from %v, want nothing", trunc(buf[:n]), from)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want a timeout", err)
	}
}

func trunc(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + fmt.Sprintf("...(%d bytes)", len(b))
	}
	return string(b)
}

// writeUntilRead writes msg from c to r until r reads it (from c's
// address), as a program that keeps sending does; it returns how long it
// took. Bounded by waitLong.
func writeUntilRead(t *testing.T, c, r *Conn, msg string) time.Duration {
	t.Helper()
	return writeUntilReadTicking(t, c, r, msg, nil)
}

// writeUntilReadTicking is writeUntilRead calling tick (if not nil)
// after each write that did not arrive: for a writer on a fakeClock, the
// time that passes between its writes.
func writeUntilReadTicking(t *testing.T, c, r *Conn, msg string, tick func()) time.Duration {
	t.Helper()
	start := time.Now()
	buf := make([]byte, 2048)
	for time.Since(start) < waitLong {
		if _, err := c.WriteToUDPAddrPort([]byte(msg), addrOf(r)); err != nil {
			t.Fatalf("write: %v", err)
		}
		r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, from, err := r.ReadFromUDPAddrPort(buf)
		if err == nil && string(buf[:n]) == msg && from == addrOf(c) {
			r.SetReadDeadline(time.Time{})
			return time.Since(start)
		}
		if tick != nil {
			tick()
		}
	}
	t.Fatalf("%q never arrived (writer %+v, reader %+v)", msg, c.Stats(), r.Stats())
	return 0
}

// ---- Polling a state ----

// waitFor polls ok until it holds, at most d (a bounded wait on a
// condition that has no channel to wait on), and returns how long it
// took and whether ok held.
func waitFor(d time.Duration, ok func() bool) (time.Duration, bool) {
	start := time.Now()
	for !ok() {
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start), true
}

// pollUntil polls ok until it holds, at most d: the bounded wait on a
// state that has no channel to wait on. It reports whether ok held.
func pollUntil(d time.Duration, ok func() bool) bool {
	_, held := waitFor(d, ok)
	return held
}

// waitQueueIdle waits until c's send queue has sent everything.
func waitQueueIdle(t *testing.T, c *Conn) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for c.sq.sending.Load() {
		if time.Now().After(deadline) {
			t.Fatal("send queue still sending")
		}
		time.Sleep(time.Millisecond) // the sender goroutine has no event to wait on; bounded
	}
}

// ---- A peer's state, without reaching into its locks ----

// peerSnapshot is what a test reads of a peer's state, copied under its
// locks so that no test reaches into them.
type peerSnapshot struct {
	exists              bool
	hellos              int
	attempt             bool // a hello of this attempt awaits its reply
	failErr             error
	established         bool
	cur, prev, next     bool
	queued              int
	configured, removed bool
}

func peerState(c *Conn, addr netip.AddrPort) peerSnapshot {
	p := peerOf(c, addr)
	if p == nil {
		c.peers.mu.RLock()
		p = c.peers.strangerLocked(normAddr(addr)) // replies to a hello from no peer wait there
		c.peers.mu.RUnlock()
	}
	if p == nil {
		return peerSnapshot{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kp.mu.Lock()
	defer p.kp.mu.Unlock()
	return peerSnapshot{
		exists: true, hellos: p.hs.hellos, attempt: p.hs.init != nil, failErr: p.hs.failErr,
		established: p.established, cur: p.kp.cur.Load() != nil, prev: p.kp.prev != nil, next: p.respNew != nil,
		queued: len(p.queue), configured: p.configured, removed: p.removed,
	}
}

// peerOf returns c's peer at addr, or nil: the one place the tests look a
// peer up (without making one).
func peerOf(c *Conn, addr netip.AddrPort) *peer {
	p, _ := c.peerFor(normAddr(addr), lookupOnly)
	return p
}

// allPeers returns c's peers.
func allPeers(c *Conn) []*peer {
	return c.peers.snapshot()
}

// currentSession returns c's current session with the peer at addr, or
// nil.
func currentSession(c *Conn, addr netip.AddrPort) *session {
	p := peerOf(c, addr)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kp.current()
}

// sessionOf returns c's current session with the peer at addr, and fails
// t if there is none.
func sessionOf(t testing.TB, c *Conn, addr netip.AddrPort) *session {
	t.Helper()
	if peerOf(c, addr) == nil {
		t.Fatalf("%v is not a peer", addr)
	}
	s := currentSession(c, addr)
	if s == nil {
		t.Fatalf("no session with %v", addr)
	}
	return s
}

// indexedSessions returns the indexes of c's sessions in its index.
func indexedSessions(c *Conn) []uint32 {
	c.index.mu.Lock()
	defer c.index.mu.Unlock()
	var idx []uint32
	for i, s := range c.index.sessions {
		if s != nil {
			idx = append(idx, i)
		}
	}
	return idx
}

// indexed reports whether c's index holds idx (a session's, or one
// reserved for a handshake).
func indexed(c *Conn, idx uint32) bool {
	c.index.mu.Lock()
	defer c.index.mu.Unlock()
	_, ok := c.index.sessions[idx]
	return ok
}

// confirmed reports whether c's current session with the peer at addr is
// confirmed: the other side's answer to its final message came.
func confirmed(c *Conn, addr netip.AddrPort) bool {
	s := currentSession(c, addr)
	return s != nil && s.final.Load() == nil
}

// settleSession waits (polling, bounded) until a's session with b is
// settled: a holds b's reset token (b answered a's token message) and b's
// session is confirmed, so that no handshake message is still on its way
// when a test moves the clock.
func settleSession(t *testing.T, a, b *Conn) {
	t.Helper()
	if !pollUntil(waitLong, func() bool { return confirmed(a, addrOf(b)) && confirmed(b, addrOf(a)) }) {
		t.Fatalf("the session did not settle: a %+v, b %+v", peerState(a, addrOf(b)), peerState(b, addrOf(a)))
	}
}

// stateSizes returns the sizes of c's per-source state: peers, learned
// peers, sessions (with reserved indexes), pending initiations, replies
// waiting for their final message.
type stateSizes struct {
	peers, learned, sessions, initiated, responding int
}

func stateOf(c *Conn) stateSizes {
	var s stateSizes
	c.peers.mu.RLock()
	s.peers, s.learned = len(c.peers.byAddr), c.peers.learned
	c.peers.mu.RUnlock()
	s.sessions, s.initiated = c.index.counts()
	c.index.mu.Lock()
	s.responding = len(c.index.responding)
	c.index.mu.Unlock()
	return s
}

// waitState waits until ok(stateOf(c)), at most d, and returns how long
// it took and the last state seen.
func waitState(c *Conn, d time.Duration, ok func(stateSizes) bool) (time.Duration, stateSizes, bool) {
	var s stateSizes
	took, held := waitFor(d, func() bool {
		s = stateOf(c)
		return ok(s)
	})
	return took, s, held
}
