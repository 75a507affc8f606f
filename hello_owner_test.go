package vaultudp

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// TestWantHello is the table of the one rule that decides whether a peer
// gets a hello (wantHelloLocked), by reason and the peer's state, with the
// clock given: no network, no waiting.
func TestWantHello(t *testing.T) {
	parallel(t)
	c := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: time.Second})
	retry := int64(c.retryAfter())
	addr := netip.MustParseAddrPort("127.0.0.1:9")
	type state func(p *peer)
	var (
		learned    state = func(p *peer) { p.configured, p.origin = false, originHello }
		wrote      state = func(p *peer) { p.configured, p.origin = false, originWrite }
		plain      state = func(p *peer) { p.configured, p.origin = false, originPlaintext }
		credited   state = func(p *peer) { p.credit = c.helloWireLen() }
		helloed    state = func(p *peer) { p.hs.hellos = 1 }
		attempt    state = func(p *peer) { p.hs.init = &initiation{} }
		making     state = func(p *peer) { p.hs.initiating = true }
		failed     state = func(p *peer) { p.hs.failErr, p.hs.failedAt = errors.New("timeout"), 0 }
		waiting    state = func(p *peer) { p.respNew = &response{} }
		gone       state = func(p *peer) { p.removed = true }
		proven     state = func(p *peer) { p.established = true }
		noneOfThem state = func(*peer) {}
	)
	cases := []struct {
		name  string
		why   helloReason
		state []state
		now   int64
		want  bool
	}{
		{"asked, configured", helloAsked, nil, 0, true},
		{"asked, attempt under way", helloAsked, []state{attempt}, 0, false},
		{"asked, hello being made", helloAsked, []state{making}, 0, false},
		{"asked, peer gone", helloAsked, []state{gone}, 0, false},
		{"write, learned from a hello", helloWrite, []state{learned}, 0, false},
		{"write, learned from a hello, proven", helloWrite, []state{learned, proven}, 0, true},
		{"write, application chose it", helloWrite, []state{wrote}, 0, true},
		{"write, plaintext, no credit", helloWrite, []state{plain}, 0, false},
		{"write, plaintext, credit", helloWrite, []state{plain, credited}, 0, true},
		{"write, plaintext, credit, one hello already", helloWrite, []state{plain, credited, helloed}, 0, false},
		{"offer, in the back-off", helloOffer, []state{failed}, 0, false},
		{"offer, after the back-off", helloOffer, []state{failed}, int64(time.Second), true},
		{"offer, waiting responder session", helloOffer, []state{waiting}, 0, true},
		{"rekey, learned from a hello", helloRekey, []state{learned}, 0, true},
		{"reset, learned from a hello", helloReset, []state{learned}, 0, false},
		{"reset, waiting responder session", helloReset, []state{waiting}, 0, true},
		{"retry, no attempt", helloRetry, nil, 0, false},
		{"retry, attempt", helloRetry, []state{attempt}, 0, true},
		{"retry, attempt to a learned address", helloRetry, []state{attempt, learned}, 0, false},
		{"retry, attempt to a plaintext address", helloRetry, []state{attempt, plain, credited}, 0, false},
		{"queued, waiting responder session", helloQueued, []state{waiting}, 0, false},
		{"silence, nothing", helloSilence, []state{noneOfThem}, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := c.newPeer(addr, &PeerConfig{Addr: addr})
			for _, f := range tc.state {
				f(p)
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if got := c.wantHelloLocked(p, tc.why, tc.now); got != tc.want {
				t.Fatalf("wantHelloLocked(%v) = %v, want %v", tc.why, got, tc.want)
			}
			if tc.want && !p.hs.initiating {
				t.Fatal("a hello granted without a claim")
			}
		})
	}

	// A waiting responder session defers a hello for retryAfter from the
	// first hello it deferred, however often it is renewed (a forged hello
	// can renew it at will).
	p := c.newPeer(addr, &PeerConfig{Addr: addr})
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, step := range []struct {
		now   int64
		renew bool
		want  bool
	}{{0, true, false}, {retry / 2, true, false}, {retry - 2, true, false}, {retry + 1, true, true}} {
		if step.renew {
			p.respOld, p.respNew = p.respNew, &response{}
		}
		if got := c.wantHelloLocked(p, helloWrite, step.now); got != step.want {
			t.Fatalf("at %v with a waiting session: hello %v, want %v", time.Duration(step.now), got, step.want)
		}
	}
}

// TestAddrSet: the evicted-plaintext memory remembers what it was given,
// forgets an address only after four later ones fell into its bucket, and
// holds a fixed 32 KiB however many pass.
func TestAddrSet(t *testing.T) {
	parallel(t)
	var s addrSet
	if s.has(netip.MustParseAddrPort("127.0.0.1:1")) {
		t.Fatal("the zero addrSet remembers something")
	}
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(i))
	}
	const n = 1000 // a quarter of the table
	for i := range n {
		s.add(addr(i))
	}
	lost := 0
	for i := range n {
		if !s.has(addr(i)) {
			lost++
		}
	}
	false0 := 0
	for i := n; i < n+100000; i++ {
		if s.has(addr(i)) {
			false0++
		}
	}
	t.Logf("%d of %d remembered; %d of 100,000 others taken for remembered", n-lost, n, false0)
	if lost > n/100 || false0 > 0 {
		t.Fatalf("%d of %d forgotten, %d false hits", lost, n, false0)
	}
	for i := range 1 << 20 {
		s.add(addr(i))
	}
	if len(s.slots) != addrSetBuckets*addrSetWays {
		t.Fatalf("the table grew to %d slots", len(s.slots))
	}
}
