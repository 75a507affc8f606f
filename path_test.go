package vaultudp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// The attacks on identity and paths, each through the network as an
// attacker would run it: datagrams with forged source addresses go out
// through a raw socket (the tests run as root; they skip otherwise).

// victim is a plain UDP socket that counts what reaches it.
type victim struct {
	pc    *net.UDPConn
	mu    sync.Mutex
	n     int // datagrams
	bytes int
	done  chan struct{}
	marks chan struct{} // a barrier's marker read
}

// victimMarker is barrier's datagram, not counted.
const victimMarker = "victim barrier marker"

func newVictim(t testing.TB) *victim {
	t.Helper()
	v := &victim{pc: rawUDP(t), done: make(chan struct{}), marks: make(chan struct{}, 1)}
	go func() {
		defer close(v.done)
		buf := make([]byte, 65536)
		for {
			n, _, err := v.pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == victimMarker {
				v.marks <- struct{}{}
				continue
			}
			v.mu.Lock()
			v.n++
			v.bytes += n
			v.mu.Unlock()
		}
	}()
	t.Cleanup(func() { v.pc.Close(); <-v.done })
	return v
}

func (v *victim) addr() netip.AddrPort { return normAddr(v.pc.LocalAddr().(*net.UDPAddr).AddrPort()) }

// barrier returns once v has counted every datagram that reached its
// socket before the call: its marker, sent now, queues behind them (one
// socket's receive queue is in order).
func (v *victim) barrier(t testing.TB) {
	t.Helper()
	if _, err := rawUDP(t).WriteToUDPAddrPort([]byte(victimMarker), v.addr()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.marks:
	case <-time.After(waitLong):
		t.Fatal("the victim's reader did not read the barrier's marker")
	}
}

func (v *victim) received() (int, int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.n, v.bytes
}

// factor is the amplification: bytes received by the victim per byte the
// attacker sent in its name.
func factor(got, sent int) float64 { return float64(got) / float64(max(sent, 1)) }

// TestAttackImpersonation: an attacker with its own session (any key is
// accepted by default) seals datagrams under it and sends them with the
// source address of a configured peer X, then of a learned peer Y. None is
// delivered as from X or Y; neither peer moves or is dropped; both still
// talk to the server.
func TestAttackImpersonation(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", nil)
	x := listenT(t, "udp4", "127.0.0.1:0", nil)
	y := listenT(t, "udp4", "127.0.0.1:0", nil)
	m := listenT(t, "udp4", "127.0.0.1:0", &Config{Padding: PadNone})
	if err := s.AddPeer(PeerConfig{Addr: addrOf(x), PublicKey: x.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	handshakeT(t, s, addrOf(x))
	handshakeT(t, y, addrOf(s)) // y is a learned peer of s
	handshakeT(t, m, addrOf(s))
	if _, err := y.WriteToUDPAddrPort([]byte("y here"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "y here", addrOf(y))

	for _, victim := range []netip.AddrPort{addrOf(x), addrOf(y)} {
		before := s.Stats().Drops.Unvalidated
		for range 5 {
			sp.send(t, victim, addrOf(s), sealedFrom(t, m, addrOf(s), "I am "+victim.String()))
		}
		strangerBarrier(t, rawUDP(t), addrOf(s))
		expectNothing(t, s, 20*time.Millisecond)
		if got := s.Stats().Drops.Unvalidated - before; got != 5 {
			t.Errorf("forged as %v: Drops.Unvalidated +%d, want +5", victim, got)
		}
	}
	for _, p := range s.Peers() {
		switch p.Addr {
		case addrOf(x):
			if !bytes.Equal(p.PublicKey, x.PublicKey()) {
				t.Errorf("x's address holds another key")
			}
		case addrOf(y):
			if !bytes.Equal(p.PublicKey, y.PublicKey()) {
				t.Errorf("y's address holds another key (hijacked)")
			}
		case addrOf(m):
			if !bytes.Equal(p.PublicKey, m.PublicKey()) {
				t.Errorf("m's address holds another key")
			}
		}
	}
	if !s.HasPeer(addrOf(m)) {
		t.Error("the attacker's own peer moved")
	}
	for _, c := range []*Conn{x, y} {
		msg := "still me: " + addrOf(c).String()
		if _, err := c.WriteToUDPAddrPort([]byte(msg), addrOf(s)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, s, msg, addrOf(c))
	}
}

// TestAttackReflection: the attacker's sealed datagrams, forged with a
// victim's address as source (an address no peer holds), make the server
// challenge that address, but never send it more bytes than were sent in
// its name, and deliver nothing as from it.
func TestAttackReflection(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", nil) // pads to the MTU: answers would be large
	m := listenT(t, "udp4", "127.0.0.1:0", &Config{Padding: PadNone})
	handshakeT(t, m, addrOf(s))
	v := newVictim(t)
	sent := 0
	for i := range 200 {
		dg := sealedFrom(t, m, addrOf(s), "x")
		sent += len(dg)
		sp.send(t, v.addr(), addrOf(s), dg)
		if i%50 == 49 {
			strangerBarrier(t, rawUDP(t), addrOf(s))
		}
	}
	expectNothing(t, s, 20*time.Millisecond)
	// What the server sent has been sent: one more barrier, then count.
	strangerBarrier(t, rawUDP(t), addrOf(s))
	n, got := v.received()
	t.Logf("reflection through sealed datagrams forged as from a victim: %d bytes sent, %d datagrams (%d bytes) to the victim: factor %.2f",
		sent, n, got, factor(got, sent))
	if got > sent {
		t.Errorf("the victim got %d bytes for %d sent in its name", got, sent)
	}
	if s.HasPeer(v.addr()) {
		t.Error("the victim's address became a peer")
	}
}

// TestAttackSpoofedHello: one valid hello forged as from a victim makes
// no peer (v4: a reply waits for a final message the forger cannot make,
// outside the peer table). It costs the victim one reply (no larger than
// the hello), gets no Broadcast datagrams, no retried hellos, and is
// forgotten responseLifetime (two seconds here) after its hello.
func TestAttackSpoofedHello(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: 300 * time.Millisecond})
	live := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, live, addrOf(s))
	v := newVictim(t)
	hello := helloDatagram(t)
	sp.send(t, v.addr(), addrOf(s), hello)
	strangerBarrier(t, rawUDP(t), addrOf(s))
	if s.HasPeer(v.addr()) {
		t.Fatal("the forged hello made a peer")
	}
	s.peers.mu.RLock()
	waiting := s.peers.strangerLocked(v.addr()) != nil
	s.peers.mu.RUnlock()
	if !waiting {
		t.Fatal("the forged hello was not answered (the test needs a reply waiting)")
	}
	for range 20 {
		if n, err := s.Broadcast([]byte("news")); err != nil || n != 1 {
			t.Fatalf("Broadcast: %d, %v; want 1 (the live peer only), nil", n, err)
		}
	}
	if _, err := s.WriteToUDPAddrPort([]byte("to the victim"), v.addr()); err != nil {
		t.Fatal(err)
	}
	took, st, ok := waitState(s, waitLong, func(st stateSizes) bool { return st.peers == 1 && st.responding == 0 })
	if !ok {
		t.Fatalf("the forged peer was not forgotten after %v: %+v", took, st)
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	n, got := v.received()
	t.Logf("forged hello: %d bytes sent, the victim got %d datagrams (%d bytes): factor %.2f; forgotten after %v",
		len(hello), n, got, factor(got, len(hello)), took.Round(time.Millisecond))
	if got > len(hello) {
		t.Errorf("the victim got %d bytes for a %d-byte hello", got, len(hello))
	}
}

// TestAttackOpportunisticStaysSealed: under Opportunistic, once a peer has
// had a session nothing goes to it in clear again, also after its session
// lapsed and the rekey cannot complete: writes wait for a new handshake.
func TestAttackOpportunisticStaysSealed(t *testing.T) {
	parallel(t)
	cfg := &Config{Policy: Opportunistic, HandshakeTimeout: 300 * time.Millisecond}
	a := listenT(t, "udp4", "127.0.0.1:0", cfg)
	b, err := Listen("udp4", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	bAddr := addrOf(b)
	handshakeT(t, a, bAddr)
	if _, err := a.WriteToUDPAddrPort([]byte("sealed"), bAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "sealed", addrOf(a))
	b.Close()
	// b's address now belongs to a plain socket that records everything.
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(bAddr))
	if err != nil {
		t.Skipf("cannot listen again on %v: %v", bAddr, err)
	}
	defer pc.Close()
	// The session lapses (as after 1.5 × KeyLifetime idle).
	p := peerOf(a, bAddr)
	p.mu.Lock()
	a.index.remove(p.kp.dropSending()...)
	p.mu.Unlock()
	if _, err := a.WriteToUDPAddrPort([]byte("secret after the lapse"), bAddr); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 65536)
	for {
		n, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if bytes.Contains(buf[:n], []byte("secret")) {
			t.Fatalf("the datagram went out in clear after the session lapsed: %q", buf[:n])
		}
	}
}

// TestPeerTableNoResurrection: moving, removing and forgetting peers run
// concurrently (under -race); the table keeps its invariants: the learned
// count equals the learned peers in the table and is never negative, and
// no removed peer is reachable.
func TestPeerTableNoResurrection(t *testing.T) {
	parallel(t)
	c := listenT(t, "udp4", "127.0.0.1:0", &Config{MaxPeers: 64})
	base := netip.MustParseAddrPort("192.0.2.1:1000")
	addr := func(i int) netip.AddrPort { return netip.AddrPortFrom(base.Addr(), uint16(1000+i)) }
	const n, rounds = 16, 200
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				i := (r*7 + w) % n
				switch w {
				case 0:
					if p, err := c.peerFor(addr(i), originWrite); err == nil {
						c.movePeer(p, addr((i+1)%n))
					}
				case 1:
					c.RemovePeer(addr(i))
				case 2:
					c.peers.mu.Lock()
					if p := c.peers.getLocked(addr(i)); p != nil {
						c.dropPeerTableLocked(p, errors.New("forgotten"))
					}
					c.peers.mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	c.peers.mu.RLock()
	defer c.peers.mu.RUnlock()
	for a, p := range c.peers.byAddr {
		p.mu.Lock()
		if p.removed {
			t.Errorf("table entry %v: removed", a)
		}
		p.mu.Unlock()
	}
	if err := c.peers.checkLocked(); err != nil {
		t.Error(err)
	}
	if c.peers.learned < 0 {
		t.Errorf("learned count %d", c.peers.learned)
	}
}

// TestAttackOpportunisticPlaintextFlood: under Opportunistic, plaintext
// from thousands of forged addresses cannot fill the peer table (peers
// known only from plaintext have their own cap, oldest evicted), so a new
// client still gets in; and a victim whose address is forged gets what
// the application answers (as a UDP socket sends it) and nothing the Conn
// adds before it has sent as many bytes: no hellos for a short datagram.
func TestAttackOpportunisticPlaintextFlood(t *testing.T) {
	heavy(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{Policy: Opportunistic, MaxPeers: maxPlaintextPeers + 10, HandshakeTimeout: 300 * time.Millisecond})
	dg := (&record{payload: []byte("hi"), hasPayload: true}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
	n := scaled(3*maxPlaintextPeers, maxPlaintextPeers+100)
	for i := range n {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 4000)
		sp.send(t, from, addrOf(s), dg)
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	if st := stateOf(s); st.learned < maxPlaintextPeers/2 {
		t.Fatalf("only %d learned peers after %d forged sources: the test's datagrams did not arrive", st.learned, n)
	} else if st.learned > maxPlaintextPeers+1 {
		t.Errorf("%d plaintext sources: %d learned peers, cap %d", n, st.learned, maxPlaintextPeers)
	}
	client := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, client, addrOf(s))

	// What the flood delivered fills the read queue: read it out, so the
	// victim's datagram finds room.
	drain := make([]byte, 64)
	for range 10 * maxPlaintextPeers {
		s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, _, err := s.ReadFromUDPAddrPort(drain); err != nil {
			break
		}
	}
	// The application answers the victim's (forged) datagram.
	v := newVictim(t)
	sp.send(t, v.addr(), addrOf(s), dg)
	buf := make([]byte, 64)
	for {
		s.SetReadDeadline(time.Now().Add(waitLong))
		k, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		if from == v.addr() {
			if _, err := s.WriteToUDPAddrPort(buf[:k], from); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	// Wait out the handshake timeout: no retried hellos either.
	if _, st, ok := waitState(s, waitLong, func(st stateSizes) bool { return st.initiated == 0 }); !ok {
		t.Fatalf("initiations pending: %+v", st)
	}
	waitQueueIdle(t, s)
	v.barrier(t) // what s sent has been counted
	got, bytesGot := v.received()
	answer := len(dg) // the application's answer, in an open datagram of the same size
	t.Logf("Opportunistic, plaintext forged as from a victim: %d bytes sent, victim got %d datagrams (%d bytes, %d of them the application's answer): Conn-added factor %.2f",
		len(dg), got, bytesGot, answer, factor(bytesGot-answer, len(dg)))
	if bytesGot-answer > len(dg) {
		t.Errorf("the Conn added %d bytes to the victim for %d sent", bytesGot-answer, len(dg))
	}
}
