package vaultudp

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// heldOnPaths sums the buffers that c holds for datagrams waiting for
// path validation, over all its peers.
func heldOnPaths(c *Conn) (bytes, datagrams int) {
	for _, p := range allPeers(c) {
		p.mu.Lock()
		if pc := p.path; pc != nil {
			for _, q := range pc.held {
				bytes += cap(q.buf)
				datagrams++
			}
		}
		p.mu.Unlock()
	}
	return bytes, datagrams
}

// TestSecurityPathHeldMemory (item 6): attackers with sessions of their
// own (any key is accepted by default) send their largest sealed
// datagrams from addresses that never answer a path challenge. What the
// server holds meanwhile is bounded for the whole Conn, not only per peer.
func TestSecurityPathHeldMemory(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{Padding: PadNone, HandshakeTimeout: time.Second})
	if !s.sock.Load().Caps().GRO {
		t.Skip("the socket reads no datagram larger than its MTU's (no UDP GRO: the portable path): the attack's 60 KB datagrams are dropped before any path check")
	}
	const sessions = 32
	payload := strings.Repeat("x", 60000)
	sent := 0
	for i := range sessions {
		m := listenT(t, "udp4", "127.0.0.1:0", &Config{Padding: PadNone})
		handshakeT(t, m, addrOf(s))
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 2, byte(1 + i)}), 40000)
		for range maxHeldOnPath {
			d := sealedFrom(t, m, addrOf(s), payload)
			sp.send(t, from, addrOf(s), d)
			sent += len(d)
		}
		m.Close()
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	held, n := heldOnPaths(s)
	t.Logf("%d sessions sent %d datagrams (%d KiB) from unanswering addresses: the server holds %d of them, %d KiB (bound %d KiB); Drops.Unvalidated %d",
		sessions, sessions*maxHeldOnPath, sent>>10, n, held>>10, maxHeldBytesPerConn>>10, s.Stats().Drops.Unvalidated)
	if held > maxHeldBytesPerConn {
		t.Errorf("held %d bytes on unvalidated paths, bound %d", held, maxHeldBytesPerConn)
	}
	if n == 0 {
		t.Error("nothing held: the test did not reach the path check")
	}
	// Unanswered, the paths are abandoned after a handshake timeout, and
	// the count with them.
	if took, ok := waitFor(waitLong, func() bool { return s.heldBytes.Load() == 0 }); !ok {
		t.Errorf("%d bytes still counted as held after %v", s.heldBytes.Load(), took)
	}
}
