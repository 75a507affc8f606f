package vaultudp

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// eventLog collects a Conn's events.
type eventLog struct {
	mu     sync.Mutex
	events []Event
	more   chan struct{}
}

func newEventLog() *eventLog { return &eventLog{more: make(chan struct{}, 1)} }

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
}

// wait returns the first event of kind for addr, waiting for it (at most
// waitLong).
func (l *eventLog) wait(t *testing.T, kind EventKind, addr netip.AddrPort) Event {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		l.mu.Lock()
		for _, e := range l.events {
			if e.Kind == kind && (!addr.IsValid() || e.Addr == addr) {
				l.mu.Unlock()
				return e
			}
		}
		got := append([]Event(nil), l.events...)
		l.mu.Unlock()
		select {
		case <-l.more:
		case <-deadline:
			t.Fatalf("no %v event for %v; events %+v", kind, addr, got)
		}
	}
}

// TestEvents: each kind of event, over real sockets (the timed ones with
// the test clock): up on both sides, refused with the key and the reason,
// failed, reset when the peer restarted, down when the sessions expired,
// roamed when the peer moved, forgotten when a learned peer idled out.
func TestEvents(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	la, lb := newEventLog(), newEventLog()
	a := fakeListen(t, clk, &Config{Events: la.add, KeyLifetime: 10 * time.Second, KeepaliveTimeout: -1, SilenceTimeout: -1})
	b := fakeListen(t, clk, &Config{Events: lb.add, KeyLifetime: 10 * time.Second, KeepaliveTimeout: -1, SilenceTimeout: -1})
	handshakeT(t, a, addrOf(b))
	a.WriteToUDPAddrPort([]byte("confirm"), addrOf(b))
	expectRead(t, b, "confirm", addrOf(a))
	if e := la.wait(t, EventUp, addrOf(b)); !keysEqual(e.Key, b.PublicKey()) {
		t.Fatalf("a's up event names key %x, want b's", e.Key)
	}
	if e := lb.wait(t, EventUp, addrOf(a)); !keysEqual(e.Key, a.PublicKey()) {
		t.Fatalf("b's up event names key %x, want a's", e.Key)
	}

	// Refused: a pins a key that c does not have.
	c := fakeListen(t, clk, nil)
	if err := a.AddPeer(PeerConfig{Addr: addrOf(c), PublicKey: GenerateIdentity().Public().(ed25519.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	if e := la.wait(t, EventRefused, addrOf(c)); !keysEqual(e.Key, c.PublicKey()) || !errors.Is(e.Err, ErrPeerRejected) {
		t.Fatalf("refused event %+v: want c's key and ErrPeerRejected", e)
	}

	// Failed: nobody answers.
	silent := addrOf2(rawUDP(t))
	a.WriteToUDPAddrPort([]byte("lost"), silent)
	clk.advance(t, 5*time.Second+time.Millisecond, time.Second)
	if e := la.wait(t, EventFailed, silent); !errors.Is(e.Err, ErrHandshakeTimeout) {
		t.Fatalf("failed event %+v: want ErrHandshakeTimeout", e)
	}

	// Down: no traffic, the sessions expire (receive limit 20 s).
	settleSession(t, a, b)
	clk.advance(t, 20*time.Second, time.Second)
	la.wait(t, EventDown, addrOf(b))
	// Forgotten: b's learned peer a, idle past a session's lifetime.
	lb.wait(t, EventForgotten, addrOf(a))
}

// TestEventsRoam: a peer whose NAT mapping changes is reported as
// EventRoamed, with the address it left.
func TestEventsRoam(t *testing.T) {
	parallel(t)
	la := newEventLog()
	a := listenT(t, "udp4", "127.0.0.1:0", &Config{Events: la.add})
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	a.WriteToUDPAddrPort([]byte("one"), addrOf(b))
	expectRead(t, b, "one", addrOf(a))
	b.WriteToUDPAddrPort([]byte("two"), addrOf(a))
	expectRead(t, a, "two", addrOf(b))
	old := addrOf(b)
	if err := b.Rebind("127.0.0.1:0"); err != nil { // the NAT gave b a new port
		t.Fatal(err)
	}
	for i := 0; ; i++ { // b writes until a has validated the new address
		b.WriteToUDPAddrPort([]byte("moved"), addrOf(a))
		if _, from := readWithin(t, a, waitLong); from == addrOf(b) {
			break
		}
		if i == 50 {
			t.Fatal("a never took b's new address")
		}
	}
	if e := la.wait(t, EventRoamed, addrOf(b)); e.From != old {
		t.Fatalf("roamed event %+v: want from %v", e, old)
	}

}

// TestEventsReset: a peer that restarts with its key on its address
// answers a datagram under the session it lost with a reset: EventReset.
func TestEventsReset(t *testing.T) {
	parallel(t)
	la := newEventLog()
	a := listenT(t, "udp4", "127.0.0.1:0", &Config{Events: la.add})
	id := GenerateIdentity() // b keeps its key across its restart, as a server does
	b := listenT(t, "udp4", "127.0.0.1:0", &Config{Identity: id})
	handshakeT(t, a, addrOf(b))
	a.WriteToUDPAddrPort([]byte("one"), addrOf(b))
	expectRead(t, b, "one", addrOf(a))
	b.WriteToUDPAddrPort([]byte("two"), addrOf(a))
	expectRead(t, a, "two", addrOf(b))
	at := addrOf(b)
	b.Close()
	listenT(t, "udp4", at.String(), &Config{Identity: id})
	a.WriteToUDPAddrPort([]byte("after the restart"), at)
	la.wait(t, EventReset, at)
}

// TestEventsCallbackMayCallTheConn: the Events callback may call Stats,
// Peers and Close; Close returns, and so does the callback.
func TestEventsCallbackMayCallTheConn(t *testing.T) {
	parallel(t)
	var mu sync.Mutex
	var a *Conn
	closed := make(chan error, 1)
	cfg := &Config{Events: func(e Event) {
		mu.Lock()
		c := a
		mu.Unlock()
		c.Stats()
		c.Peers()
		if e.Kind == EventUp {
			closed <- c.Close()
		}
	}}
	mu.Lock()
	a = listenT(t, "udp4", "127.0.0.1:0", cfg)
	mu.Unlock()
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	a.Handshake(ctx, addrOf(b))
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close from the Events callback: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close called from the Events callback did not return")
	}
}

func keysEqual(a, b []byte) bool { return string(a) == string(b) }
