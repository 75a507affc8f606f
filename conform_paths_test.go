package vaultudp

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestConformTwoPathsOneIdentity: one client reaches one server on two
// paths at once, directly and through a relay, so the server sees one
// identity's hellos from two addresses. The hello sent first (to the
// relay) is held there until the one sent second (directly) has been
// answered and has carried its datagram: the older hello arrives second.
// It is a new hello on another path, not a replay, and is answered at
// once; before, the responder kept only the newest timestamp per identity
// and dropped it as stale, and that path waited for the 1 s retry (quic-go
// saw 1.02 s where UDP takes 6 ms).
func TestConformTwoPathsOneIdentity(t *testing.T) {
	client, server := pair(t, "udp4", "127.0.0.1", nil, nil)
	relay := newUDPRelay(t, addrOf(client), addrOf(server), 65536, true)

	start := time.Now()
	if _, err := client.WriteToUDPAddrPort([]byte("via relay"), relay.addr()); err != nil {
		t.Fatal(err)
	}
	// The relay holds the first hello; it must have it before the second
	// is sent, or the two would not be in the order this test is about.
	waitClosed(t, relay.gotHeld, "the relay's receiving the first hello")
	if _, err := client.WriteToUDPAddrPort([]byte("direct"), addrOf(server)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "direct", addrOf(client))
	direct := time.Since(start)

	released := time.Now()
	relay.release()
	expectRead(t, server, "via relay", relay.addr())
	second := time.Since(released)
	t.Logf("direct path: %v from the first write; relayed path, whose hello was overtaken: %v after the relay released it (%v in all); retry interval %v",
		direct.Round(time.Microsecond), second.Round(time.Microsecond), time.Since(start).Round(time.Microsecond), server.retryAfter())

	if d := server.Stats().Drops.Stale; d != 0 {
		t.Errorf("the server dropped %d hellos as stale: the overtaken hello of the second path was refused", d)
	}
	if all := time.Since(start); all >= client.retryAfter() {
		t.Errorf("both paths took %v: the second waited for a retry (every %v), not its first hello", all, client.retryAfter())
	}
}

// TestConformTwoPathsReplay: what lets an overtaken hello of a second path
// through does not let a replay through. The relayed path's hello, once
// answered, is sent again from a third address (a replay from elsewhere)
// and from the relay (a replay on its own path); a hello from the relay
// older than the one answered there is refused too. None is answered, and
// the server learns no peer at the attacker's address.
func TestConformTwoPathsReplay(t *testing.T) {
	client, server := pair(t, "udp4", "127.0.0.1", nil, nil)
	relay := newUDPRelay(t, addrOf(client), addrOf(server), 65536, true)

	if _, err := client.WriteToUDPAddrPort([]byte("via relay"), relay.addr()); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, relay.gotHeld, "the relay's receiving the first hello")
	hello := relay.heldDatagrams()[0]
	if _, err := client.WriteToUDPAddrPort([]byte("direct"), addrOf(server)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "direct", addrOf(client))
	relay.release()
	expectRead(t, server, "via relay", relay.addr())

	before := server.Stats()
	attacker := rawUDP(t)
	if _, err := attacker.WriteToUDPAddrPort(hello, addrOf(server)); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.pc.WriteToUDPAddrPort(hello, addrOf(server)); err != nil {
		t.Fatal(err)
	}
	// A stranger's hello after the replays: once it is answered, the
	// server has handled them. It costs one signature check and makes the
	// stranger a peer.
	strangerBarrier(t, rawUDP(t), addrOf(server))
	after := server.Stats()
	if d := after.Drops.Stale - before.Drops.Stale; d != 2 {
		t.Errorf("stale drops %d, want 2 (the replay from a third address and the one from the relay); stats %+v", d, after)
	}
	if d := after.Verifications - before.Verifications; d != 1 {
		t.Errorf("%d signature checks, want 1 (the stranger's): the replays cost some", d)
	}
	if server.HasPeer(normAddr(attacker.LocalAddr().(*net.UDPAddr).AddrPort())) {
		t.Errorf("the replay from a third address made it a peer")
	}
	if after.Peers != before.Peers+1 {
		t.Errorf("peers %d, then %d: want one more, the stranger", before.Peers, after.Peers)
	}
}

// TestConformHelloLog: the responder's freshness rule per identity, step
// by step.
func TestConformHelloLog(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.1:1000")
	b := netip.MustParseAddrPort("192.0.2.2:1000")
	const t0 = uint64(1_700_000_000_000_000_000)
	ms := uint64(time.Millisecond)
	var h *helloLog
	if !h.fresh(t0, a) {
		t.Fatal("a first hello is refused")
	}
	h = new(helloLog)
	h.record(t0+10*ms, a)
	for _, c := range []struct {
		name string
		ts   uint64
		from netip.AddrPort
		ok   bool
	}{
		{"the same hello again, same address", t0 + 10*ms, a, false},
		{"the same hello from elsewhere", t0 + 10*ms, b, false},
		{"older, same address", t0 + 5*ms, a, false},
		{"older, another address, within the reorder window", t0 + 5*ms, b, true},
		{"older, another address, at the window's edge", t0 + 10*ms - uint64(helloReorder), b, true},
		{"older, another address, past the window", t0 + 10*ms - uint64(helloReorder) - 1, b, false},
		{"newer, same address", t0 + 11*ms, a, true},
		{"newer, another address", t0 + 11*ms, b, true},
	} {
		if got := h.fresh(c.ts, c.from); got != c.ok {
			t.Errorf("%s: fresh = %v, want %v", c.name, got, c.ok)
		}
	}
	// The overtaken hello is answered and remembered: its replay is not.
	h.record(t0+5*ms, b)
	if h.fresh(t0+5*ms, a) || h.fresh(t0+5*ms, b) || h.fresh(t0+4*ms, b) {
		t.Error("a replay of the overtaken hello, or an older one on its path, is fresh")
	}
	if !h.fresh(t0+6*ms, b) || h.newest != t0+10*ms {
		t.Errorf("newest %d, fresh(t0+6ms, b) %v", h.newest-t0, h.fresh(t0+6*ms, b))
	}

	// Many paths at once: the log keeps helloPaths of them; the oldest it
	// forgets becomes the floor, below which everything is refused.
	h = new(helloLog)
	for i := range helloPaths + 3 {
		h.record(t0+uint64(i)*ms, netip.AddrPortFrom(a.Addr(), uint16(2000+i)))
	}
	if h.n != helloPaths || h.floor != t0+2*ms {
		t.Errorf("log of %d with floor t0+%dms, want %d with floor t0+2ms", h.n, (h.floor-t0)/ms, helloPaths)
	}
	for i := range helloPaths + 3 {
		if h.fresh(t0+uint64(i)*ms, b) {
			t.Errorf("the answered hello t0+%dms is fresh from another address", i)
		}
	}
	if !h.fresh(t0+2*ms+1, b) {
		t.Error("a hello just above the floor from a new address is refused")
	}
	// Entries behind the reorder window are dropped: refused by age.
	h.record(t0+uint64(helloReorder)+20*ms, a)
	if h.n != 1 || h.fresh(t0+5*ms+1, b) {
		t.Errorf("after a hello a window later: log of %d, old hello fresh %v", h.n, h.fresh(t0+5*ms+1, b))
	}
}
