//go:build linux

package vaultudp

import (
	"context"
	"testing"
	"time"
)

// TestSecurityConfirmFromTheAddress (item 8), as v4 has it: a responder
// session is completed, and its identity takes the address the hello
// came from, by the initiator's final message, which only a holder of
// the reply's secrets can make: the reply went to the hello's address, so
// the final proves the initiator receives there, wherever the final
// itself comes from (a NAT rebinding between the two, PROTOCOL.md 9.5).
// What does not follow: a sealed datagram copied on the path and sent
// from another address is not delivered as from the peer (the new address
// must prove itself first, path.go); sent from the address, it is.
func TestSecurityConfirmFromTheAddress(t *testing.T) {
	parallel(t)
	s := listenT(t, "udp4", "127.0.0.1:0", nil)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	r := newPathRelay(t, addrOf(c), addrOf(s))
	r.hold.Store(true)
	r.holdAll.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Handshake(ctx, r.addr()) }()
	next := func(typ byte) []byte {
		for {
			select {
			case d := <-r.held:
				if d[1] == typ {
					return d
				}
			case <-ctx.Done():
				t.Fatalf("no datagram of type %d from c", typ)
				return nil
			}
		}
	}
	established := func() bool {
		for _, p := range s.Peers() {
			if p.Addr == r.addr() {
				return p.Established
			}
		}
		return false
	}
	other := rawUDP(t)
	r.toBackend(t, next(typeHello)) // the hello, from the relay's address
	// The final message, from elsewhere: it completes the session for
	// the hello's address, whose confirmation reaches c through the relay.
	if _, err := other.WriteToUDPAddrPort(next(typeFinal), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !established() {
		t.Fatal("the final message did not complete the session for the hello's address")
	}
	if s.HasPeer(addrOf2(other)) {
		t.Fatal("the final's source became a peer")
	}
	if _, err := c.WriteToUDPAddrPort([]byte("first"), r.addr()); err != nil {
		t.Fatal(err)
	}
	first := next(typeSealed)
	unvalidated := s.Stats().Drops.Unvalidated
	if _, err := other.WriteToUDPAddrPort(first, addrOf(s)); err != nil {
		t.Fatal(err)
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	r.hold.Store(false)
	r.toBackend(t, first) // from the address: a replay if the copy was opened
	for len(r.held) > 0 {
		r.toBackend(t, <-r.held)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("second"), r.addr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	s.SetReadDeadline(time.Now().Add(waitLong))
	for {
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no datagram from c: %v", err)
		}
		if from != r.addr() {
			t.Fatalf("%q delivered as from %v, the copy's source", buf[:n], from)
		}
		if string(buf[:n]) == "second" {
			break
		}
	}
	t.Logf("a copied datagram from elsewhere: Drops.Unvalidated +%d", s.Stats().Drops.Unvalidated-unvalidated)
}
