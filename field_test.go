package vaultudp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The field events of a drop-in: what a program over a *net.UDPConn meets
// (a burst before the peer exists, restarts, silence, NAT), each over real
// loopback sockets, the way a user's program meets it.

// TestFieldBurstBeforePeerExists: 200 writes of 1000 bytes to an address
// where nobody listens yet. Every write returns len(p), nil, as on a UDP
// socket; the peer appears within the handshake timeout; the datagrams
// that fit the queue (bounded in bytes) arrive, in order, and the rest are
// counted in Stats.Drops.WriteQueueFull.
func TestFieldBurstBeforePeerExists(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: 5 * time.Second})
	to := deadPort(t, "udp4", "127.0.0.1")
	const writes, size = 200, 1000
	msg := make([]byte, size)
	for i := range writes {
		binary.BigEndian.PutUint32(msg, uint32(i))
		n, err := a.WriteToUDPAddrPort(msg, to)
		if err != nil || n != size {
			t.Fatalf("write %d before the peer exists: %d, %v; want %d, nil", i, n, err, size)
		}
	}
	fit := maxQueuedBytesPerPeer / size
	if got := a.Stats().Drops.WriteQueueFull; got != uint64(writes-fit) {
		t.Errorf("Drops.WriteQueueFull %d, want %d (%d bytes queue per peer)", got, writes-fit, maxQueuedBytesPerPeer)
	}
	b := listenT(t, "udp4", to.String(), nil) // the peer starts; a's hello retries reach it
	for i := range fit {
		got, from := readWithin(t, b, waitLong)
		if from != addrOf(a) || len(got) != size || binary.BigEndian.Uint32(got) != uint32(i) {
			t.Fatalf("datagram %d: %d bytes, number %d, from %v; want %d bytes, number %d, from %v",
				i, len(got), binary.BigEndian.Uint32(got), from, size, i, addrOf(a))
		}
	}
	expectNothing(t, b, 50*time.Millisecond)
	if s := a.Stats(); s.DatagramsOut != uint64(fit) {
		t.Errorf("DatagramsOut %d, want %d", s.DatagramsOut, fit)
	}
}

// TestFieldQueueBoundPerConn: the bytes waiting for handshakes are bounded
// per Conn as well as per peer, whatever the number of peers.
func TestFieldQueueBoundPerConn(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: 5 * time.Second, MaxPeers: 1000})
	big := make([]byte, 1200)
	peers := maxQueuedBytesPerConn/maxQueuedBytesPerPeer + 4
	for i := range peers {
		to := deadPort(t, "udp4", "127.0.0.1")
		for range maxQueuedBytesPerPeer / len(big) {
			if _, err := a.WriteToUDPAddrPort(big, to); err != nil {
				t.Fatalf("peer %d: %v", i, err)
			}
		}
	}
	if q := a.queuedBytes.Load(); q > maxQueuedBytesPerConn {
		t.Fatalf("%d bytes queued, bound %d", q, maxQueuedBytesPerConn)
	}
	if a.Stats().Drops.WriteQueueFull == 0 {
		t.Error("nothing counted in Drops.WriteQueueFull")
	}
}

// clientRestarted has a client on a port of its own send s a datagram
// (s learns its key), close, and come back on the same port with a new
// identity and Config cc; it returns the port and the new client (closed
// when the test ends).
func clientRestarted(t *testing.T, s *Conn, cc *Config) (netip.AddrPort, *Conn) {
	t.Helper()
	c1, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	port := addrOf(c1)
	if _, err := c1.WriteToUDPAddrPort([]byte("old key"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "old key", port)
	c1.Close()
	c2 := restartOn(t, port, cc)
	closeAtEnd(t, c2)
	return port, c2
}

// keyAt returns the key of s's peer at addr (nil: none known).
func keyAt(s *Conn, addr netip.AddrPort) []byte {
	for _, p := range s.PeersByIP(addr.Addr()) {
		if p.Addr == addr {
			return p.PublicKey
		}
	}
	return nil
}

// TestFieldClientRestartsWithNewKey: a client on a fixed port restarts
// with a fresh identity. The server, which accepts any key, remembers the
// old one at that address (trust on first use), challenges the old
// session, gets no answer, and takes the new identity within about a
// hello retry, whatever the two sides' handshake timeouts: with a server
// at 1 s and a client at the default 5 s, the client's final message came
// again (every second) only after the server had dropped its response,
// and the client waited out its whole attempt (CI met it when a parallel
// test's client was given a closed client's port).
func TestFieldClientRestartsWithNewKey(t *testing.T) {
	parallel(t)
	for _, tc := range []struct {
		name           string
		server, client time.Duration // HandshakeTimeout; zero: the default
		writeFirst     bool          // no Handshake: the datagram rides in the final message
	}{
		{"defaults", 0, 0, false},
		{"server 1s, client 2s", time.Second, 2 * time.Second, false},
		{"server 1s, client default", time.Second, 0, false},
		{"server default, client 1s", 0, time.Second, false},
		{"defaults, written at once", 0, 0, true},
		{"server 1s, client default, written at once", time.Second, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: tc.server})
			port, c2 := clientRestarted(t, s, &Config{HandshakeTimeout: tc.client})
			start := time.Now()
			if !tc.writeFirst {
				handshakeT(t, c2, addrOf(s))
			}
			if _, err := c2.WriteToUDPAddrPort([]byte("new key"), addrOf(s)); err != nil {
				t.Fatal(err)
			}
			expectRead(t, s, "new key", port)
			t.Logf("back after %v", time.Since(start).Round(time.Millisecond))
			if !bytes.Equal(keyAt(s, port), c2.PublicKey()) {
				t.Errorf("the server's peer at %v has the old key", port)
			}
		})
	}
}

// TestFieldLivePeerNotDisplaced: hellos forged as from a live learned
// peer's address (from another identity, which a v4 hello does not show)
// are answered, but what they start cannot be completed without
// receiving at that address: the live peer keeps its place and its
// session, and no liveness challenge is even needed (a new identity is
// judged at a final message, which the forger cannot make).
func TestFieldLivePeerNotDisplaced(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: time.Second})
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, c, addrOf(s))
	if _, err := c.WriteToUDPAddrPort([]byte("confirmed"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "confirmed", addrOf(c))
	before := s.Stats()
	for range 6 {
		sp.send(t, addrOf(c), addrOf(s), helloDatagram(t))
		strangerBarrier(t, rawUDP(t), addrOf(s))
		if _, err := c.WriteToUDPAddrPort([]byte("alive"), addrOf(s)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, s, "alive", addrOf(c))
	}
	after := s.Stats()
	if got := after.Handshakes - before.Handshakes; got != 0 {
		t.Errorf("%d handshakes completed, want none (hellos alone)", got)
	}
	if got := after.Verifications - before.Verifications; got != 12 {
		t.Errorf("%d hellos answered, want 12 (6 forged, 6 barriers)", got)
	}
	for _, p := range s.PeersByIP(addrOf(c).Addr()) {
		if p.Addr == addrOf(c) && !bytes.Equal(p.PublicKey, c.PublicKey()) {
			t.Fatal("the live peer was displaced")
		}
	}
	if _, err := s.WriteToUDPAddrPort([]byte("still yours"), addrOf(c)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "still yours", addrOf(s))
}

// TestFieldPeerRestartsSameIdentity: a server restarts on the same port
// with the same identity while a client keeps writing. The new server
// answers the client's datagrams for the lost session with a stateless
// reset; the client handshakes at once and its datagrams arrive again,
// long before any silence timer (the defaults: 15 s) would have noticed.
func TestFieldPeerRestartsSameIdentity(t *testing.T) {
	parallel(t)
	s1, c, id := pinnedServer(t, nil)
	sAddr := addrOf(s1)
	s1.Close()
	s2 := restartOn(t, sAddr, &Config{Identity: id})
	took := writeUntilRead(t, c, s2, "after the restart")
	st := c.Stats()
	t.Logf("reached again %v after the restart: %d resets received, %d sent by the new server, %d handshakes",
		took.Round(time.Microsecond), st.ResetsReceived, s2.Stats().ResetsSent, st.Handshakes)
	if st.ResetsReceived == 0 || st.Silences != 0 || st.Handshakes < 2 {
		t.Errorf("ResetsReceived %d, Silences %d, Handshakes %d; want a reset, no silence, a new handshake", st.ResetsReceived, st.Silences, st.Handshakes)
	}
}

// TestFieldForgedReset: a reset without the session's token (an attacker
// who saw the traffic, not the token) changes nothing.
func TestFieldForgedReset(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	writeUntilRead(t, a, b, "one")
	if _, err := b.WriteToUDPAddrPort([]byte("two"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "two", addrOf(b))
	idx := sessionOf(t, a, addrOf(b)).remoteIndex
	sp := newSpoofer(t)
	before := a.Stats()
	forged := make([]byte, resetLen)
	forged[0], forged[1] = ProtocolVersion, typeReset
	binary.BigEndian.PutUint32(forged[4:], idx)
	sp.send(t, addrOf(b), addrOf(a), forged) // from b's address, right index, no token
	strangerBarrier(t, rawUDP(t), addrOf(a))
	if st := a.Stats(); st.ResetsReceived != 0 || st.Handshakes != before.Handshakes || st.Drops.Auth != before.Drops.Auth+1 {
		t.Errorf("after a forged reset: ResetsReceived %d, Handshakes %d -> %d, Drops.Auth %d -> %d; want 0, +0 (the barrier's hello completes none), +1",
			st.ResetsReceived, before.Handshakes, st.Handshakes, before.Drops.Auth, st.Drops.Auth)
	}
	writeUntilRead(t, a, b, "three")
}

// TestFieldSilence: a server vanishes without a word (its port swallows
// everything: no resets). The client notices the silence after
// SilenceTimeout, handshakes in vain and gives the session up; when the
// server is back (same identity), the client's writes reach it again.
func TestFieldSilence(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	short := &Config{KeepaliveTimeout: 100 * time.Millisecond, HandshakeTimeout: 300 * time.Millisecond, clock: clk}
	s1, c, id := pinnedServer(t, short)
	sAddr := addrOf(s1)
	settleSession(t, c, s1) // else c's final message, unanswered, fails the handshake before any silence
	s1.Close()
	hole, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(sAddr))
	if err != nil {
		t.Skipf("cannot listen again on %v: %v", sAddr, err)
	}
	// The client's timers run as the test moves its clock: 50 ms a write.
	var took time.Duration
	for c.Stats().HandshakeFailures == 0 {
		if took > 100*c.cfg.SilenceTimeout {
			t.Fatalf("no failed handshake after %v of silence: %+v", took, c.Stats())
		}
		c.WriteToUDPAddrPort([]byte("into the void"), sAddr)
		clk.advance(t, 50*time.Millisecond, 0)
		took += 50 * time.Millisecond
	}
	if st := c.Stats(); st.Silences == 0 {
		t.Errorf("Silences %d, want the silence counted", st.Silences)
	}
	hole.Close()
	s2 := restartOn(t, sAddr, &Config{Identity: id})
	back := writeUntilReadTicking(t, c, s2, "after the silence", func() { clk.advance(t, 50*time.Millisecond, 0) })
	t.Logf("silence noticed and given up after %v (the client's clock); reached again %v after the server came back", took, back.Round(time.Millisecond))
}

// TestFieldPeerRestartsNewIdentity: a server comes back on the same port
// with another key. A client that pinned the old key, or remembered it on
// first use, refuses it, visibly: Handshake returns ErrPeerRejected naming
// both keys, PeerInfo carries it, Stats counts it.
func TestFieldPeerRestartsNewIdentity(t *testing.T) {
	parallel(t)
	for _, pinned := range []bool{true, false} {
		t.Run(map[bool]string{true: "pinned", false: "remembered"}[pinned], func(t *testing.T) {
			short := &Config{KeepaliveTimeout: 100 * time.Millisecond, HandshakeTimeout: 300 * time.Millisecond}
			s1, err := Listen("udp4", "127.0.0.1:0", nil)
			if err != nil {
				t.Fatal(err)
			}
			sAddr, oldKey := addrOf(s1), s1.PublicKey()
			clk := newFakeClock()
			c := fakeListen(t, clk, short)
			if pinned {
				if err := c.AddPeer(PeerConfig{Addr: sAddr, PublicKey: oldKey}); err != nil {
					t.Fatal(err)
				}
			}
			writeUntilRead(t, c, s1, "before")
			settleSession(t, c, s1) // else c's final message, unanswered, fails a handshake with s1
			s1.Close()
			s2 := restartOn(t, sAddr, nil)
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			// The silence starts a handshake; the new key is refused. c's
			// timers run as the test moves its clock: 10 ms a write.
			var err2 error
			for i := 0; i < 1000; i++ {
				c.WriteToUDPAddrPort([]byte("lost"), sAddr)
				failed := func() bool { _, ok := c.handshakeFailure(sAddr); return ok }
				if peerState(c, sAddr).attempt { // its hello is out: s2's answer ends it
					pollUntil(waitLong, failed)
				}
				if failed() {
					break
				}
				clk.advance(t, 10*time.Millisecond, 0)
			}
			err2, _ = c.handshakeFailure(sAddr)
			if !errors.Is(err2, ErrPeerRejected) || !strings.Contains(err2.Error(), EncodePublicKey(oldKey)) ||
				!strings.Contains(err2.Error(), EncodePublicKey(s2.PublicKey())) {
				t.Fatalf("PeerInfo.LastFailure %v, want ErrPeerRejected naming both keys", err2)
			}
			if err := c.Handshake(ctx, sAddr); !errors.Is(err, ErrPeerRejected) {
				t.Errorf("Handshake: %v, want ErrPeerRejected", err)
			}
			if c.Stats().Drops.Rejected == 0 {
				t.Error("Drops.Rejected not counted")
			}
			expectNothing(t, s2, 20*time.Millisecond)
		})
	}
}

// handshakeFailure returns PeerInfo.LastFailure of the peer at addr.
func (c *Conn) handshakeFailure(addr netip.AddrPort) (error, bool) {
	for _, p := range c.Peers() {
		if p.Addr == addr && p.LastFailure != nil {
			return p.LastFailure, true
		}
	}
	return nil, false
}

// TestFieldPassiveKeepalive: a peer that only receives answers with
// passive keepalives, so the sender does not take it for silent and
// handshake again.
func TestFieldPassiveKeepalive(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	short := func() *Config {
		return &Config{KeepaliveTimeout: 50 * time.Millisecond, HandshakeTimeout: 200 * time.Millisecond}
	}
	a, b := fakeListen(t, clk, short()), fakeListen(t, clk, short())
	handshakeT(t, a, addrOf(b))
	settleSession(t, a, b)
	// b's confirmation and its answer to a's token are keepalives it does
	// not count as sent: a may get more than b counts.
	in0, sent0 := a.Stats().KeepalivesIn, b.Stats().KeepalivesSent
	for i := 0; time.Duration(i)*10*time.Millisecond < 4*a.cfg.SilenceTimeout; i++ {
		msg := fmt.Sprintf("one-way %d", i)
		if _, err := a.WriteToUDPAddrPort([]byte(msg), addrOf(b)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, b, msg, addrOf(a))
		clk.advance(t, 10*time.Millisecond, 0) // a program's pace
		// Every keepalive b sent has reached a before a's timers look
		// again (loopback loses nothing).
		if !pollUntil(waitLong, func() bool { return a.Stats().KeepalivesIn-in0 >= b.Stats().KeepalivesSent-sent0 }) {
			t.Fatalf("a got %d keepalives of the %d b sent", a.Stats().KeepalivesIn-in0, b.Stats().KeepalivesSent-sent0)
		}
	}
	sa, sb := a.Stats(), b.Stats()
	t.Logf("a: silences %d, handshakes %d, keepalives in %d; b: keepalives sent %d", sa.Silences, sa.Handshakes, sa.KeepalivesIn, sb.KeepalivesSent)
	if sb.KeepalivesSent == 0 || sa.KeepalivesIn == 0 {
		t.Errorf("no passive keepalive: b sent %d, a got %d", sb.KeepalivesSent, sa.KeepalivesIn)
	}
	if sa.Silences != 0 {
		t.Errorf("a took a live peer for silent %d times", sa.Silences)
	}
}

// TestFieldPersistentKeepalive: PeerConfig.Keepalive sends empty sealed
// datagrams to an idle peer at that interval (for NAT mappings).
func TestFieldPersistentKeepalive(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a, b := fakeListen(t, clk, nil), listenT(t, "udp4", "127.0.0.1:0", nil)
	if err := a.AddPeer(PeerConfig{Addr: addrOf(b), Keepalive: 60 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	handshakeT(t, a, addrOf(b))
	clk.advance(t, 4*61*time.Millisecond, 61*time.Millisecond) // the marks are the clock | 1: a nanosecond late
	took, ok := waitFor(waitLong, func() bool { return b.Stats().KeepalivesIn >= 4 })
	if !ok {
		t.Fatalf("%d keepalives received %v after 4 intervals", b.Stats().KeepalivesIn, took)
	}
	if s := a.Stats(); s.KeepalivesSent < 3 || s.DatagramsOut != 0 {
		t.Errorf("a: KeepalivesSent %d, DatagramsOut %d", s.KeepalivesSent, s.DatagramsOut)
	}
}

// TestFieldWritesDuringFlushKeepOrder: one goroutine writes numbered
// datagrams without pause from before the handshake until well after it.
// The ones written before it wait in the queue and are sent when the
// session comes; a write made while they are being sent must not overtake
// them, though it finds the new session without taking a lock. Loopback
// keeps a socket's datagrams in order, so any reordering is the Conn's.
func TestFieldWritesDuringFlushKeepOrder(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	const after = 2000 // writes once the session is there
	wrote, stop := make(chan int, 1), make(chan struct{})
	var werr error
	defer func() { close(stop); <-wrote }() // the writer ends before the test
	go func() {
		msg := make([]byte, 64)
		i, left := 0, -1
		for ; left != 0 && i < 1<<20; i++ {
			select {
			case <-stop:
				wrote <- i
				return
			default:
			}
			binary.BigEndian.PutUint32(msg, uint32(i))
			if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
				werr = fmt.Errorf("write %d: %w", i, err)
				break
			}
			switch {
			case left > 0:
				left--
			case i%16 == 0 && a.Stats().Handshakes > 0:
				left = after
			}
		}
		wrote <- i
	}()
	last, got := -1, 0
	for {
		if err := b.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 128)
		n, _, err := b.ReadFromUDPAddrPort(buf)
		if err != nil {
			break // the writer has finished, and what it sent is read
		}
		if n != 64 {
			t.Fatalf("a %d-byte datagram, want 64", n)
		}
		i := int(binary.BigEndian.Uint32(buf))
		if i <= last {
			t.Fatalf("datagram %d arrived after %d", i, last)
		}
		last = i
		got++
	}
	writes := <-wrote
	wrote <- writes // for the deferred wait
	if werr != nil {
		t.Fatal(werr)
	}
	s := a.Stats()
	if got == 0 || s.DatagramsOut != uint64(writes)-s.Drops.WriteQueueFull {
		t.Fatalf("%d datagrams read; a sent %d of %d written, %d dropped at the queue", got, s.DatagramsOut, writes, s.Drops.WriteQueueFull)
	}
	t.Logf("%d of %d written were read, in order", got, writes)
}
