//go:build linux

package vaultudp

import (
	"testing"
	"time"
)

// TestSecurityLivenessChallengeReflection (item 5): hellos signed by
// another key, forged as from a learned peer's address (or one captured
// hello replayed), make the server send that peer liveness challenges.
// What reaches the peer's address must not exceed what the attacker sent
// in its name, and the peer's PeerInfo.LastFailure must not take the
// refusal of a hello nobody proved came from there.
func TestSecurityLivenessChallengeReflection(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	cfg := &Config{HandshakeTimeout: 500 * time.Millisecond} // pads to the MTU
	s := listenT(t, "udp4", "127.0.0.1:0", cfg)
	l := listenT(t, "udp4", "127.0.0.1:0", nil)
	r := newPathRelay(t, addrOf(l), addrOf(s)) // counts what reaches l's address
	handshakeT(t, l, r.addr())
	if _, err := l.WriteToUDPAddrPort([]byte("confirm"), r.addr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "confirm", r.addr())
	// The session's setup is over once both ends hold each other's
	// reset token (the initiator resends its own until answered).
	ls, ss := sessionOf(t, l, r.addr()), sessionOf(t, s, r.addr())
	if _, ok := waitFor(waitLong, func() bool { return ls.peerToken.Load() != nil && ss.peerToken.Load() != nil }); !ok {
		t.Fatal("tokens not exchanged")
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	strangerBarrier(t, rawUDP(t), addrOf(l))
	attack := func(hello func() []byte) (sent, got int) {
		start := r.toA.Load()
		for range 6 {
			h := hello()
			sp.send(t, r.addr(), addrOf(s), h)
			sent += len(h)
			strangerBarrier(t, rawUDP(t), addrOf(s))
			time.Sleep(s.liveWait() + 10*time.Millisecond) // the attacker's pace: one per liveness window
		}
		strangerBarrier(t, rawUDP(t), addrOf(s))
		strangerBarrier(t, rawUDP(t), addrOf(l)) // l has handled what came (its answers are sent)
		return sent, int(r.toA.Load() - start)
	}
	captured := helloDatagram(t)
	sentR, gotR := attack(func() []byte { return captured })
	sentF, gotF := attack(func() []byte { return helloDatagram(t) }) // a new key each time
	sent, got := sentR+sentF, gotR+gotF
	t.Logf("6 replays of a hello with another key, forged as from a learned peer: %d bytes sent, %d reached the peer's address (factor %.2f); 6 fresh ones: %d sent, %d reached (factor %.2f)",
		sentR, gotR, factor(gotR, sentR), sentF, gotF, factor(gotF, sentF))
	var lastFailure error
	for _, p := range s.Peers() {
		if p.Addr == r.addr() {
			lastFailure = p.LastFailure
		}
	}
	t.Logf("the live peer's LastFailure after the attack: %v", lastFailure)
	if got > sent {
		t.Errorf("the peer's address got %d bytes for %d sent in its name", got, sent)
	}
	if lastFailure != nil {
		t.Errorf("an unproved hello set the live peer's LastFailure: %v", lastFailure)
	}
}
