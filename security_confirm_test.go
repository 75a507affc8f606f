//go:build linux

package vaultudp

import (
	"context"
	"testing"
	"time"
)

// TestSecurityConfirmFromTheAddress (item 8): a responder session is
// confirmed, and its identity takes the address the hello came from, only
// by a datagram from that address: the confirmation proves the initiator
// receives there. The same confirmation, sent from another address (here
// by whoever read it on the path), confirms nothing; sent from the
// address, it confirms.
func TestSecurityConfirmFromTheAddress(t *testing.T) {
	s := listenT(t, "udp4", "127.0.0.1:0", nil)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	r := newPathRelay(t, addrOf(c), addrOf(s))
	r.hold.Store(true)
	r.holdAll.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Handshake(ctx, r.addr()) }()
	next := func() []byte {
		select {
		case d := <-r.held:
			return d
		case <-ctx.Done():
			t.Fatal("nothing from c")
			return nil
		}
	}
	r.toBackend(t, next()) // the hello, from the relay's address
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("first"), r.addr()); err != nil {
		t.Fatal(err)
	}
	var first []byte
	for first == nil || first[1] != typeSealed {
		first = next()
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
	if _, err := other.WriteToUDPAddrPort(first, addrOf(s)); err != nil {
		t.Fatal(err)
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	fromElsewhere := established()
	r.hold.Store(false)
	r.toBackend(t, first) // now from the address: a replay, the copy was opened
	for len(r.held) > 0 {
		r.toBackend(t, <-r.held) // the rest, "first" among them
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	fromAddr := established()
	t.Logf("confirmation from another address confirmed the session: %v; from the hello's address: %v; Drops.Unvalidated %d",
		fromElsewhere, fromAddr, s.Stats().Drops.Unvalidated)
	if fromElsewhere {
		t.Error("a confirmation from another address established the peer at the hello's address")
	}
	if !fromAddr {
		t.Error("the confirmation from the hello's address did not confirm")
	}
	if _, err := c.WriteToUDPAddrPort([]byte("second"), r.addr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	s.SetReadDeadline(time.Now().Add(waitLong))
	for {
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no datagram from c after the confirmation: %v", err)
		}
		if string(buf[:n]) == "second" && from == r.addr() {
			break // "first" came before it, if the copy was not it
		}
	}
}
