package vaultudp

import (
	"testing"
	"time"
)

// TestReview7FloorHoldsStrangerSlots measures what the two-second floor
// on a reply's wait (6c777a7, responseLifetime) costs a server with a
// short handshake timeout: a reply to a hello from a new address waits on
// a stranger counted against MaxPeers, now for 2 s rather than
// HandshakeTimeout (300 ms here). Hellos from new (perhaps forged)
// addresses below the cookie threshold then hold MaxPeers slots with
// 2 s / 300 ms = 6.7 times fewer hellos a second than before: here 4
// hellos keep a fifth new client refused (Drops.PeerLimit) from 300 ms
// to 2 s after them, where before it got in at 300 ms. With the default
// handshake timeout (5 s) nothing changes. The memory bound itself
// (MaxPeers strangers and learned peers) holds.
func TestReview7FloorHoldsStrangerSlots(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	const maxPeers = 4
	s := fakeListen(t, clk, &Config{HandshakeTimeout: 300 * time.Millisecond, MaxPeers: maxPeers})
	for range maxPeers {
		raw := rawUDP(t)
		if _, err := raw.WriteToUDPAddrPort(helloDatagram(t), addrOf(s)); err != nil {
			t.Fatal(err)
		}
		from := addrOf2(raw)
		if !pollUntil(waitLong, func() bool { return peerState(s, from).next }) {
			t.Fatalf("the hello from %v not answered: %+v", from, s.Stats())
		}
	}
	newcomer := func() (answered bool) {
		t.Helper()
		raw := rawUDP(t)
		before := s.Stats()
		if _, err := raw.WriteToUDPAddrPort(helloDatagram(t), addrOf(s)); err != nil {
			t.Fatal(err)
		}
		if took, ok := waitFor(waitLong, func() bool {
			st := s.Stats()
			return st.Verifications > before.Verifications || st.Drops.PeerLimit > before.Drops.PeerLimit
		}); !ok {
			t.Fatalf("the newcomer's hello not handled after %v", took)
		}
		return s.Stats().Verifications > before.Verifications
	}
	clk.advance(t, 500*time.Millisecond, 100*time.Millisecond) // past HandshakeTimeout
	if newcomer() {
		t.Fatal("a new client got in at 500 ms: the strangers' replies no longer wait two seconds (responseLifetime)")
	}
	t.Logf("at 500 ms (HandshakeTimeout 300 ms): %d strangers of %d hold the table, a new client refused (PeerLimit %d); before 6c777a7 they were gone at 300 ms",
		maxPeers, maxPeers, s.Stats().Drops.PeerLimit)
	clk.advance(t, 1600*time.Millisecond, 100*time.Millisecond) // 2.1 s
	if !newcomer() {
		t.Fatalf("a new client refused 2.1 s after the hellos: %+v", s.Stats())
	}
}
