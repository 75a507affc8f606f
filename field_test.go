package vaultudp

import (
	"bytes"
	"encoding/binary"
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

// TestFieldClientRestartsWithNewKey: a client on a fixed port restarts
// with a fresh identity. The server, which accepts any key, remembers the
// old one at that address (trust on first use), challenges the old
// session, gets no answer, and takes the new identity within about a
// hello retry.
func TestFieldClientRestartsWithNewKey(t *testing.T) {
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: time.Second})
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

	c2 := listenT(t, "udp4", port.String(), &Config{HandshakeTimeout: 2 * time.Second})
	start := time.Now()
	handshakeT(t, c2, addrOf(s))
	if _, err := c2.WriteToUDPAddrPort([]byte("new key"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "new key", port)
	t.Logf("back after %v", time.Since(start).Round(time.Millisecond))
	ps := s.PeersByIP(port.Addr())
	for _, p := range ps {
		if p.Addr == port && !bytes.Equal(p.PublicKey, c2.PublicKey()) {
			t.Errorf("the server's peer at %v has the old key", port)
		}
	}
}

// TestFieldLivePeerNotDisplaced: hellos with another identity forged as
// from a live learned peer's address are refused: the live peer answers
// the liveness challenge sealed under its session, and keeps its place.
func TestFieldLivePeerNotDisplaced(t *testing.T) {
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: time.Second})
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, c, addrOf(s))
	before := s.Stats()
	for range 6 {
		sp.send(t, addrOf(c), addrOf(s), helloDatagram(t))
		strangerBarrier(t, rawUDP(t), addrOf(s))
		// Let the liveness answer come back before the next hello.
		if _, err := c.WriteToUDPAddrPort([]byte("alive"), addrOf(s)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, s, "alive", addrOf(c))
		// The challenge was answered (not merely not yet overdue).
		s.mu.RLock()
		p := s.peers[addrOf(c)]
		s.mu.RUnlock()
		deadline := time.Now().Add(waitLong)
		for {
			p.mu.Lock()
			answered := p.live == nil && p.alive != 0
			p.mu.Unlock()
			if answered {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the live peer did not answer the liveness challenge")
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded above
		}
	}
	after := s.Stats()
	// Each barrier is a handshake of its own; the forged hellos got none.
	if got := after.Handshakes - before.Handshakes; got != 6 {
		t.Errorf("%d handshakes completed, want the 6 barriers' only", got)
	}
	if after.Drops.Rejected-before.Drops.Rejected != 6 {
		t.Errorf("Drops.Rejected +%d, want +6 (the forged hellos)", after.Drops.Rejected-before.Drops.Rejected)
	}
	for _, p := range s.PeersByIP(addrOf(c).Addr()) {
		if p.Addr == addrOf(c) && !bytes.Equal(p.PublicKey, c.PublicKey()) {
			t.Fatal("the live peer was displaced")
		}
	}
}
