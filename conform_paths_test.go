package vaultudp

import (
	"net"
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
	parallel(t)
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

// TestConformTwoPathsReplay: the relayed path's hello, once answered, is
// sent again from a third address (a replay from elsewhere) and from the
// relay (a replay on its own path). A v4 responder cannot tell a replayed
// hello from a retry and answers it (PROTOCOL.md 9.9: each costs it one
// handshake's work), but what it creates cannot be completed without the
// hello's private keys: no session, no peer at the attacker's address,
// and the relayed path's session goes on.
func TestConformTwoPathsReplay(t *testing.T) {
	parallel(t)
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
	if d := after.Verifications - before.Verifications; d != 3 {
		t.Errorf("%d hellos answered, want 3 (the two replays, the stranger's)", d)
	}
	if after.Handshakes != before.Handshakes {
		t.Errorf("handshakes %d, then %d: a replay completed one", before.Handshakes, after.Handshakes)
	}
	if server.HasPeer(normAddr(attacker.LocalAddr().(*net.UDPAddr).AddrPort())) {
		t.Errorf("the replay from a third address made it a peer")
	}
	if after.Peers != before.Peers {
		t.Errorf("peers %d, then %d: a hello alone makes none", before.Peers, after.Peers)
	}
	if _, err := client.WriteToUDPAddrPort([]byte("still via relay"), relay.addr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "still via relay", relay.addr())
}
