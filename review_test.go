package vaultudp

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Regressions found by a security review of the identity and session
// rules.

// TestForgedHelloDoesNotPinPeer: a hello forged as from an unpinned
// configured peer's address, before its first session, must not make the
// forger's key that peer's remembered identity: the real peer, when it
// comes, completes its handshake.
func TestForgedHelloDoesNotPinPeer(t *testing.T) {
	parallel(t)
	atk, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	bAddr := addrOf2(atk)
	// a's attempt neither retries nor fails but when the test moves the
	// clock: its first hello goes to atk, its retry to the real peer.
	clk := newFakeClock()
	a := fakeListen(t, clk, &Config{HandshakeTimeout: 300 * time.Millisecond})
	if err := a.AddPeer(PeerConfig{Addr: bAddr}); err != nil {
		t.Fatal(err)
	}
	// A hello that wins the crossed-hello tie-break against a's own
	// (the greater ephemeral key): a answers it.
	p := peerOf(a, bAddr)
	var mine *noise.Initiation
	for range 1000 {
		p.mu.Lock()
		if p.hs.init != nil {
			mine = p.hs.init.n
		}
		p.mu.Unlock()
		if mine != nil {
			break
		}
		time.Sleep(time.Millisecond) // the hello is being made; bounded
	}
	if mine == nil {
		t.Fatal("a sent no hello")
	}
	var forged []byte
	for {
		forged = helloDatagramFrom(GenerateIdentity(), time.Now(), 7, nil)
		if h, err := noise.ParseHello(bytes.Clone(forged)); err == nil && !mine.KeepsInitiating(h) {
			break
		}
	}
	if _, err := atk.WriteToUDPAddrPort(forged, addrOf(a)); err != nil {
		t.Fatal(err)
	}
	// The forged hello is answered (the reply comes back to atk).
	atk.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 2048)
	for {
		n, _, err := atk.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no reply to the forged hello: %v", err)
		}
		if n > 8 && buf[0] == ProtocolVersion && buf[1] == typeReply {
			break
		}
	}
	atk.Close()
	listenT(t, "udp4", bAddr.String(), nil) // the real peer
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Handshake(ctx, bAddr) }()
	clk.advance(t, 150*time.Millisecond, 0) // one retry (every 100 ms), the deferral for the forged reply over
	if err := <-done; err != nil {
		t.Fatalf("the configured peer after one forged hello: %v", err)
	}
}

// TestLostConfirmation: the initiator's final message is lost and it
// writes nothing for a while; the final message is sent again until the
// responder confirms it, so the session works when it writes.
func TestLostConfirmation(t *testing.T) {
	parallel(t)
	n := newMemNet()
	ma, mb := n.listen(t, "10.0.0.1:1000"), n.listen(t, "10.0.0.2:2000")
	var mu sync.Mutex
	dropped := false
	n.mu.Lock()
	n.drop = func(from, to netip.AddrPort, b []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		if from == ma.addr && len(b) > 1 && b[1] == typeFinal && !dropped {
			dropped = true // the first final message
			return true
		}
		return false
	}
	n.mu.Unlock()
	clk := newFakeClock() // the final message goes again when the test moves it
	cfg := func() *Config { return &Config{MTU: 1500, HandshakeTimeout: 300 * time.Millisecond, clock: clk} }
	a, b := wrapT(t, ma, cfg()), wrapT(t, mb, cfg())
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Handshake(ctx, mb.addr) }()
	lost := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return dropped && currentSession(a, mb.addr) != nil
	}
	if !pollUntil(waitLong, lost) {
		t.Fatal("no final message was sent")
	}
	if confirmed(a, mb.addr) {
		t.Fatal("confirmed though the final message was lost")
	}
	clk.advance(t, 150*time.Millisecond, 50*time.Millisecond) // a retry (every 100 ms), within HandshakeTimeout
	if err := <-done; err != nil {
		t.Fatalf("handshake with %v: %v (stats %+v)", mb.addr, err, a.Stats())
	}
	if !confirmed(a, mb.addr) {
		t.Fatal("the responder never confirmed")
	}
	if _, err := a.WriteToUDPAddrPort([]byte("after a lost confirmation"), mb.addr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "after a lost confirmation", ma.addr)
}

// TestLostChallengeDoesNotDisplace: a live learned peer's liveness
// challenge is lost, and forged hellos with another identity keep coming
// from its address. The forger is answered, but cannot confirm a session
// from there (it receives nothing there), so it never takes the address;
// the live peer keeps it and gets through.
func TestLostChallengeDoesNotDisplace(t *testing.T) {
	parallel(t)
	n := newMemNet()
	ms, ml := n.listen(t, "10.0.0.1:1000"), n.listen(t, "10.0.0.2:2000")
	cfg := &Config{MTU: 1500, HandshakeTimeout: 300 * time.Millisecond}
	s, l := wrapT(t, ms, cfg), wrapT(t, ml, cfg)
	handshakeT(t, l, ms.addr)
	if _, err := l.WriteToUDPAddrPort([]byte("hi"), ms.addr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "hi", ml.addr)
	var mu sync.Mutex
	armed := true
	n.mu.Lock()
	n.drop = func(from, to netip.AddrPort, b []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		if from == ms.addr && to == ml.addr && armed && len(b) > 1 && b[1] == typeSealed {
			armed = false // the liveness challenge is lost
			return true
		}
		return false
	}
	n.mu.Unlock()
	id := GenerateIdentity()
	eph, _ := ecdh.X25519().GenerateKey(rand.Reader)
	for i := range 4 {
		n.inject(ml.addr, ms.addr, helloDatagramFrom(id, time.Now(), uint32(7+i), eph))
		time.Sleep(s.liveWait() + 10*time.Millisecond) // the scenario: the challenge overdue
	}
	for i := range 5 {
		msg := []byte("still here")
		if _, err := l.WriteToUDPAddrPort(msg, ms.addr); err != nil {
			t.Fatal(err)
		}
		if got, _ := readWithin(t, s, waitLong); !bytes.Equal(got, msg) {
			t.Fatalf("write %d: read %q", i, got)
		}
	}
	p := peerOf(s, ml.addr)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !bytes.Equal(p.identity, l.PublicKey()) {
		t.Error("the live learned peer was displaced by forged hellos after one lost challenge")
	}
}
