package vaultudp

import (
	"fmt"
	"net/netip"
	"testing"
)

// checkLocked reports a broken invariant (for tests).
func (t *peerTable) checkLocked() error {
	learned, plain := 0, 0
	for a, p := range t.byAddr {
		if p.addr != a {
			return fmt.Errorf("peer at %v says it is at %v", a, p.addr)
		}
		if t.strangers[a] != nil {
			return fmt.Errorf("%v is both a peer and a stranger", a)
		}
		if !p.configured {
			learned++
			if p.origin == originPlaintext {
				plain++
			}
		}
	}
	if learned != t.learned || plain != t.plain {
		return fmt.Errorf("counts learned %d, plain %d; the table holds %d and %d", t.learned, t.plain, learned, plain)
	}
	if len(t.plainOrder) > 2*maxPlaintextPeers {
		return fmt.Errorf("plainOrder holds %d, bound %d", len(t.plainOrder), 2*maxPlaintextPeers)
	}
	return nil
}

// TestPeerTable: every change keeps the table's invariants, and its
// limits hold: learned peers and strangers share max, plaintext peers are
// evicted oldest first, a configured peer is never counted.
func TestPeerTable(t *testing.T) {
	const max = 4
	tb := newPeerTable(max)
	at := func(i int) netip.AddrPort { return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 9) }
	mk := func(i int, origin peerOrigin) *peer {
		return &peer{addr: at(i), origin: origin, configured: origin == originConfig, changed: make(chan struct{})}
	}
	step := func(what string, f func()) {
		t.Helper()
		tb.mu.Lock()
		defer tb.mu.Unlock()
		f()
		if err := tb.checkLocked(); err != nil {
			t.Fatalf("after %s: %v", what, err)
		}
	}
	cfg := mk(1, originConfig)
	step("a configured peer", func() { tb.insertLocked(cfg) })
	if tb.learned != 0 {
		t.Fatalf("a configured peer counted as learned: %d", tb.learned)
	}
	var plain []*peer
	step("three plaintext peers", func() {
		for i := 2; i < 5; i++ {
			p := mk(i, originPlaintext)
			tb.insertLocked(p)
			plain = append(plain, p)
		}
	})
	if tb.learned != 3 || tb.plain != 3 || tb.learnedFullLocked() {
		t.Fatalf("learned %d, plain %d, full %v; want 3, 3, false", tb.learned, tb.plain, tb.learnedFullLocked())
	}
	stranger := mk(9, originHello)
	step("a stranger", func() { tb.addStrangerLocked(stranger) })
	if !tb.strangersFullLocked() || tb.learnedFullLocked() {
		t.Fatalf("3 learned + 1 stranger of %d: strangers full %v, learned full %v; want true, false", max, tb.strangersFullLocked(), tb.learnedFullLocked())
	}
	step("the oldest plaintext peer evicted", func() {
		q := tb.plainCandidateLocked()
		if q != plain[0] {
			t.Fatalf("candidate %v, want the oldest, %v", q.addr, plain[0].addr)
		}
		q.mu.Lock()
		tb.removeLocked(q)
		q.removed = true
		q.mu.Unlock()
	})
	step("a plaintext peer configured", func() {
		p := plain[1]
		p.mu.Lock()
		tb.configureLocked(p, mk(int(p.addr.Addr().As4()[3]), originConfig))
		p.mu.Unlock()
	})
	if tb.learned != 1 || tb.plain != 1 {
		t.Fatalf("learned %d, plain %d; want 1, 1", tb.learned, tb.plain)
	}
	step("the next candidate skips the configured peer", func() {
		if q := tb.plainCandidateLocked(); q != plain[2] {
			t.Fatalf("candidate %v, want %v", q, plain[2].addr)
		}
	})
	step("a peer moved", func() {
		p := plain[2]
		p.mu.Lock()
		tb.moveLocked(p, at(20))
		p.mu.Unlock()
	})
	if tb.getLocked(at(4)) != nil || tb.getLocked(at(20)) != plain[2] {
		t.Fatal("the move left the old entry or did not make the new one")
	}
	step("the stranger adopted", func() {
		if tb.takeStrangerLocked(stranger.addr) != stranger {
			t.Fatal("takeStranger lost it")
		}
		stranger.stranger = false
		tb.insertLocked(stranger)
	})
	if tb.learned != 2 || len(tb.strangers) != 0 {
		t.Fatalf("learned %d, strangers %d; want 2, 0", tb.learned, len(tb.strangers))
	}
	step("plainOrder stays bounded", func() {
		for i := range 3 * maxPlaintextPeers {
			p := mk(100, originPlaintext)
			p.addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 9)
			tb.insertLocked(p)
			p.mu.Lock()
			tb.removeLocked(p)
			p.removed = true
			p.mu.Unlock()
		}
	})
}
