//go:build linux

package vaultudp

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// The attacks on stateless resets (issue 21, items 1 to 3), through real
// sockets; forged sources go out through a raw socket (root only).

// pathRelay forwards datagrams between a and a backend through one socket,
// as a NAT or a load balancer does: a sees the relay's address as its
// peer, the backend sees it as its client. The backend can be switched
// (a balancer that moves the flow), and the open datagrams (handshake
// messages) from a can be held back, as a slow path would.
type pathRelay struct {
	pc      *net.UDPConn
	a       netip.AddrPort
	backend atomic.Pointer[netip.AddrPort]
	hold    atomic.Bool
	holdAll atomic.Bool // hold sealed datagrams from a too
	held    chan []byte
	done    chan struct{}
	toA     atomic.Int64 // bytes forwarded to a
}

func newPathRelay(t testing.TB, a, b netip.AddrPort) *pathRelay {
	t.Helper()
	r := &pathRelay{pc: rawUDP(t), a: a, held: make(chan []byte, 16), done: make(chan struct{})}
	r.backend.Store(&b)
	go r.run()
	t.Cleanup(func() { r.pc.Close(); <-r.done })
	return r
}

func (r *pathRelay) addr() netip.AddrPort {
	return normAddr(r.pc.LocalAddr().(*net.UDPAddr).AddrPort())
}

func (r *pathRelay) run() {
	defer close(r.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		d := append([]byte(nil), buf[:n]...)
		if normAddr(from) == r.a {
			if r.hold.Load() && n > 1 && (d[1] != typeSealed || r.holdAll.Load()) {
				select {
				case r.held <- d:
				default:
				}
				continue
			}
			r.pc.WriteToUDPAddrPort(d, *r.backend.Load())
			continue
		}
		r.toA.Add(int64(n))
		r.pc.WriteToUDPAddrPort(d, r.a) // from a backend, or anyone: to a
	}
}

// toBackend sends d to the current backend from the relay's address.
func (r *pathRelay) toBackend(t testing.TB, d []byte) {
	t.Helper()
	if _, err := r.pc.WriteToUDPAddrPort(d, *r.backend.Load()); err != nil {
		t.Fatal(err)
	}
}

// helloIndex is the sender index of a hello datagram, as anyone on the
// path reads it.
func helloIndex(t testing.TB, d []byte) uint32 {
	t.Helper()
	h, err := noise.ParseHello(d)
	if err != nil {
		t.Fatalf("not a hello datagram: %x", d)
	}
	return h.SenderIndex
}

// junkFor is a 32-byte datagram that looks sealed, for session index idx:
// what anyone can make without a key.
func junkFor(idx uint32) []byte {
	b := make([]byte, sealedOverhead)
	rand.Read(b)
	b[0], b[1], b[2], b[3] = ProtocolVersion, typeSealed, 0, 0
	binary.BigEndian.PutUint32(b[4:], idx)
	return b
}

// readReset reads, within d, a reset for idx that reached pc.
func readReset(pc *net.UDPConn, idx uint32, d time.Duration) ([]byte, bool) {
	pc.SetReadDeadline(time.Now().Add(d))
	defer pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for range 100 {
		n, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil, false
		}
		if n == resetLen && buf[1] == typeReset && binary.BigEndian.Uint32(buf[4:]) == idx {
			return append([]byte(nil), buf[:n]...), true
		}
	}
	return nil, false
}

// TestSecurityNoResetForPendingHello (item 1): a hello's sender index
// travels in clear, and the session it makes takes that index. An
// attacker who sees the hello sends junk naming the index while the hello
// waits for its reply; a reset for it would carry the very token the
// session will have, and the attacker could then tear the session down at
// will with one forged datagram. The Conn sends no reset for an index it
// issued.
func TestSecurityNoResetForPendingHello(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", nil)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	r := newPathRelay(t, addrOf(c), addrOf(s))
	r.hold.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Handshake(ctx, r.addr()) }()
	var hello []byte
	select {
	case hello = <-r.held:
	case <-ctx.Done():
		t.Fatal("no hello")
	}
	idx := helloIndex(t, hello)

	att := rawUDP(t)
	junk := junkFor(idx)
	if _, err := att.WriteToUDPAddrPort(junk, addrOf(c)); err != nil {
		t.Fatal(err)
	}
	strangerBarrier(t, rawUDP(t), addrOf(c)) // c has handled the junk
	reset, got := readReset(att, idx, 50*time.Millisecond)

	r.hold.Store(false)
	r.toBackend(t, hello) // the hello goes on; the session takes idx
	if err := <-done; err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("confirm"), r.addr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "confirm", r.addr()) // s holds c's token now
	before := s.Stats()
	if got {
		// The attack: the captured reset, forged from c's address as s
		// sees it (the relay's), to s, which holds c's token for idx.
		sp.send(t, r.addr(), addrOf(s), reset)
		strangerBarrier(t, rawUDP(t), addrOf(s))
	}
	after := s.Stats()
	t.Logf("junk naming a pending hello's index (%d bytes): reset answered %v (%d bytes to the attacker); the forged reset tore the session down: %v",
		len(junk), got, len(reset), after.ResetsReceived > before.ResetsReceived)
	if got {
		t.Errorf("c answered junk naming its pending hello's index with a reset")
	}
	if after.ResetsReceived != before.ResetsReceived {
		t.Errorf("the session was torn down by a reset minted for its hello's index")
	}
}

// TestSecuritySiblingResetOracle (item 2): two Conns share an identity
// (the proxy's flows, a fleet). An attacker reads the index of a session
// of a1 on the wire and sends junk naming it to a2, from its own address:
// a2's reset must carry nothing that a1's peer accepts. Forged from the
// peer's own address instead, a2's reset goes to the peer, not to the
// attacker, from an address the peer accepts no reset from.
func TestSecuritySiblingResetOracle(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	id := GenerateIdentity()
	a1 := listenT(t, "udp4", "127.0.0.1:0", &Config{Identity: id})
	a2 := listenT(t, "udp4", "127.0.0.1:0", &Config{Identity: id})
	p := listenT(t, "udp4", "127.0.0.1:0", nil)
	writeUntilRead(t, p, a1, "one")
	writeUntilRead(t, a1, p, "two") // a1's token has reached p
	idx := binary.BigEndian.Uint32(sealedFrom(t, p, addrOf(a1), "seen on the wire")[4:])

	att := rawUDP(t)
	if _, err := att.WriteToUDPAddrPort(junkFor(idx), addrOf(a2)); err != nil {
		t.Fatal(err)
	}
	reset, got := readReset(att, idx, time.Second)
	sp.send(t, addrOf(p), addrOf(a2), junkFor(idx)) // forged as from p
	before := p.Stats()
	if got {
		sp.send(t, addrOf(a1), addrOf(p), reset) // a2's token, forged as from a1
	}
	strangerBarrier(t, rawUDP(t), addrOf(p))
	after := p.Stats()
	t.Logf("sibling asked for a reset of index %d: answered %v (%d bytes); p accepted it: %v (resets received %d, auth drops +%d)",
		idx, got, len(reset), after.ResetsReceived > before.ResetsReceived, after.ResetsReceived, after.Drops.Auth-before.Drops.Auth)
	if after.ResetsReceived != before.ResetsReceived {
		t.Fatalf("a sibling's reset tore down p's session with a1")
	}
	before = p.Stats()
	writeUntilRead(t, p, a1, "three")
	if st := p.Stats(); st.Handshakes != before.Handshakes {
		t.Errorf("p handshaked again (%d -> %d): its session with a1 did not survive", before.Handshakes, st.Handshakes)
	}
}

// TestSecurityBalancerMoveRecovers (item 2): hosts sharing an identity
// behind a balancer that routes by the client's address, serving on the
// same port. When the balancer moves a flow to a host that never saw it,
// that host's reset carries the token the first host gave, and the client
// handshakes again at once: about a round trip, not a silence timeout.
func TestSecurityBalancerMoveRecovers(t *testing.T) {
	id := GenerateIdentity()
	h1, err := Listen("udp4", "127.0.0.2:0", &Config{Identity: id})
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	closeAtEnd(t, h1)
	h2, err := Listen("udp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), addrOf(h1).Port()).String(), &Config{Identity: id})
	if err != nil {
		t.Skipf("no 127.0.0.3 on the same port: %v", err)
	}
	closeAtEnd(t, h2)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	lb := newPathRelay(t, addrOf(c), addrOf(h1))
	buf := make([]byte, 2048)
	exchange := func(h *Conn, msg string) time.Duration {
		start := time.Now()
		for time.Since(start) < waitLong {
			if _, err := c.WriteToUDPAddrPort([]byte(msg), lb.addr()); err != nil {
				t.Fatal(err)
			}
			h.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			n, _, err := h.ReadFromUDPAddrPort(buf)
			if err == nil && string(buf[:n]) == msg {
				h.SetReadDeadline(time.Time{})
				return time.Since(start)
			}
		}
		t.Fatalf("%q never arrived", msg)
		return 0
	}
	exchange(h1, "before")
	if _, err := h1.WriteToUDPAddrPort([]byte("ack"), lb.addr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "ack", lb.addr()) // h1's token has reached c
	h2addr := addrOf(h2)
	lb.backend.Store(&h2addr) // the balancer moves the flow
	took := exchange(h2, "after the move")
	st := c.Stats()
	t.Logf("flow moved to a host that never saw it: reached again after %v; resets received %d, sent by the new host %d",
		took.Round(time.Microsecond), st.ResetsReceived, h2.Stats().ResetsSent)
	if st.ResetsReceived == 0 || st.Silences != 0 {
		t.Errorf("ResetsReceived %d, Silences %d: want the move recovered by a reset", st.ResetsReceived, st.Silences)
	}
}

// TestSecurityResetBudgetPerSource (item 3): a server restarts (same
// identity, same port) under a flood of junk datagrams from forged
// sources, 40,000 a second (4,000 under -race). Its real client, owed a reset, still gets one
// within three writes, and is reached again; the table of budgets is
// bounded.
func TestSecurityResetBudgetPerSource(t *testing.T) {
	alone(t)
	sp := newSpoofer(t)
	s1, c, id := pinnedServer(t, nil)
	sAddr := addrOf(s1)
	if _, err := s1.WriteToUDPAddrPort([]byte("ack"), addrOf(c)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "ack", sAddr)
	s1.Close()
	s2 := restartOn(t, sAddr, &Config{Identity: id})

	// Under the race detector the server's reader handles a tenth as
	// much, and the kernel would drop the client's datagrams with the
	// flood's: the flood comes down with it.
	rate := scaled[int64](40000, 4000)
	stop := make(chan struct{})
	var flooded atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			due := int64(time.Since(start).Seconds()*float64(rate)) - flooded.Load()
			for range min(due, rate/100) {
				// Random sources across 127/8, none in 127.0.0/24.
				from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(1 + mrand.IntN(254)), byte(mrand.IntN(256)), byte(1 + mrand.IntN(254))}),
					uint16(1024+mrand.IntN(60000)))
				sp.sendQuiet(from, sAddr, junkFor(mrand.Uint32())) // not t: another goroutine
				flooded.Add(1)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	floodStart := time.Now()
	for flooded.Load() < rate/5 && time.Since(floodStart) < waitLong { // 200 ms of flood first
		time.Sleep(time.Millisecond) // polling the flooder's count; bounded
	}

	before := c.Stats()
	buf := make([]byte, 2048)
	start := time.Now()
	arrived := false
	for i := 0; i < 3 && !arrived; i++ {
		if _, err := c.WriteToUDPAddrPort([]byte("after"), sAddr); err != nil {
			t.Fatal(err)
		}
		for !arrived {
			s2.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, _, err := s2.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			arrived = string(buf[:n]) == "after"
		}
	}
	took := time.Since(start)
	st := c.Stats()
	rateSeen := float64(flooded.Load()) / time.Since(floodStart).Seconds()
	s2.resets.budget.mu.Lock()
	slots := len(s2.resets.budget.slots)
	s2.resets.budget.mu.Unlock()
	t.Logf("junk flood at %.0f/s from forged sources: the client got %d reset(s) in 3 writes, reached again: %v after %v; the server sent %d resets; budget table %d slots (%d KiB)",
		rateSeen, st.ResetsReceived-before.ResetsReceived, arrived, took.Round(time.Millisecond), s2.Stats().ResetsSent, slots, slots*24/1024)
	if st.ResetsReceived == before.ResetsReceived || !arrived {
		t.Errorf("the flood starved the client of its reset (resets %d, arrived %v)", st.ResetsReceived-before.ResetsReceived, arrived)
	}
	if slots > budgetSlots {
		t.Errorf("budget table grew to %d slots", slots)
	}
}
