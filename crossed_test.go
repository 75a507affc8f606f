package vaultudp

import (
	"context"
	"testing"
	"time"
)

// TestHandshakeCrossedAddPeer: two Conns add each other as peers at once,
// so their hellos cross, and each may answer the other's before its own
// AddPeer has run (the hello reaches a Conn that reads at once). Over many
// rounds, both handshakes complete well within one handshake timeout and
// datagrams flow both ways right after: the crossing never leaves both
// sides waiting as responders, or one side sealing under a session the
// other dropped.
func TestHandshakeCrossedAddPeer(t *testing.T) {
	parallel(t)
	dump := func(name string, c *Conn) {
		for _, p := range allPeers(c) {
			p.mu.Lock()
			t.Logf("%s: peer %v: current %v, replies waiting %v %v, init %v, initiating %v, failure %v",
				name, p.addr, p.kp.current() != nil, p.respNew != nil, p.respOld != nil, p.hs.init != nil, p.hs.initiating, p.hs.failErr)
			p.mu.Unlock()
		}
		t.Logf("%s: %+v", name, c.Stats())
	}
	rounds := scaled(60, 20)
	for i := range rounds {
		a := listenT(t, "udp4", "127.0.0.1:0", nil)
		b := listenT(t, "udp4", "127.0.0.1:0", nil)
		if err := a.AddPeer(PeerConfig{Addr: addrOf(b), PublicKey: b.PublicKey()}); err != nil {
			t.Fatal(err)
		}
		if err := b.AddPeer(PeerConfig{Addr: addrOf(a), PublicKey: a.PublicKey()}); err != nil {
			t.Fatal(err)
		}
		for _, d := range [][2]*Conn{{a, b}, {b, a}} {
			// Well under HandshakeTimeout (5 s): a stuck crossing only
			// resolves when an unconfirmed session expires.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := d[0].Handshake(ctx, addrOf(d[1]))
			cancel()
			if err != nil {
				dump("a", a)
				dump("b", b)
				t.Fatalf("round %d: Handshake: %v", i, err)
			}
		}
		for _, d := range [][2]*Conn{{a, b}, {b, a}} {
			if _, err := d[0].WriteToUDPAddrPort([]byte("x"), addrOf(d[1])); err != nil {
				t.Fatal(err)
			}
			d[1].SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 8)
			if _, _, err := d[1].ReadFromUDPAddrPort(buf); err != nil {
				dump("a", a)
				dump("b", b)
				t.Fatalf("round %d: the first datagram after the handshake: %v", i, err)
			}
		}
		a.Close()
		b.Close()
	}
}
