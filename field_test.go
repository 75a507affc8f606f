package vaultudp

import (
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
