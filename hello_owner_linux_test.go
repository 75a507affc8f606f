package vaultudp

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestForgedHellosDoNotBlockOwnHandshake: an attacker who can forge the
// source address of a configured, unpinned peer sends a correctly signed
// hello of its own identity from that address, again and again. Each one
// leaves a responder session waiting for a confirmation that never comes;
// the Conn's own handshake with the real peer must still start (a waiting
// session defers it for retryAfter at most) and complete, and the
// application's datagram arrive.
func TestForgedHellosDoNotBlockOwnHandshake(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	cfg := &Config{HandshakeTimeout: time.Second}
	a := listenT(t, "udp4", "127.0.0.1:0", cfg)
	b := listenT(t, "udp4", "127.0.0.1:0", cfg)
	if err := a.AddPeer(PeerConfig{Addr: addrOf(b)}); err != nil { // not pinned
		t.Fatal(err)
	}
	// The forger: a hello from b's address every 50 ms, until the end.
	stop, stopped := make(chan struct{}), make(chan struct{})
	var forged atomic.Int32
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for range 400 { // 20 s at most
			sp.send(t, addrOf(b), addrOf(a), helloDatagram(t))
			forged.Add(1)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); <-stopped }()
	// Let the forged hellos in first: the waiting session exists before
	// the Conn wants its own.
	deadline := time.Now().Add(waitLong)
	for a.Stats().Handshakes == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polled; bounded by the deadline
	}
	if a.Stats().Handshakes == 0 {
		t.Fatal("no forged hello answered: the attack did not take place")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*cfg.HandshakeTimeout)
	defer cancel()
	err := a.Handshake(ctx, addrOf(b))
	took := time.Since(start)
	t.Logf("a's own handshake with b under forged hellos every 50 ms: %v after %v (%d forged so far)", err, took.Round(time.Millisecond), forged.Load())
	if err != nil {
		t.Fatalf("no session with the real peer: %v", err)
	}
	if _, err := a.WriteToUDPAddrPort([]byte("through"), addrOf(b)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "through", addrOf(a))
}

// TestEvictedPlaintextPeerGetsNoHellos: under Opportunistic, addresses
// known only from the plaintext they sent (forged, here: the victims') are
// evicted by newer ones (1,100 forged sources); the application answers
// them afterwards. Each victim gets the answer, in clear, as from a UDP
// socket, and no hello nor retry: an address known only from plaintext
// gets at most one hello, paid for by what it sent, however it came back
// into the table.
func TestEvictedPlaintextPeerGetsNoHellos(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	cfg := &Config{Policy: Opportunistic, HandshakeTimeout: 500 * time.Millisecond, ReadQueue: 4096}
	clk := newFakeClock()
	srv := fakeListen(t, clk, cfg)
	open := func(b []byte) []byte {
		return (&record{payload: b, hasPayload: true}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
	}
	var victims []*victim
	for range 4 {
		v := newVictim(t)
		victims = append(victims, v)
		sp.send(t, v.addr(), addrOf(srv), open([]byte("twelve bytes")))
	}
	const fillers = maxPlaintextPeers + 76
	for i := range fillers {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 1, byte(i / 250)}), uint16(20000+i))
		sp.send(t, from, addrOf(srv), open([]byte("twelve bytes")))
	}
	// The application reads everything, then answers the victims.
	srv.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 64)
	for i := range len(victims) + fillers {
		if _, _, err := srv.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("read %d: %v (stats %+v)", i, err, srv.Stats())
		}
	}
	for _, v := range victims {
		if _, err := srv.WriteToUDPAddrPort([]byte("the answer"), v.addr()); err != nil {
			t.Fatal(err)
		}
	}
	// Long enough for a hello and its retries (retryAfter: 100 ms), then
	// all that srv sent has reached the victims.
	clk.advance(t, 3*cfg.HandshakeTimeout/2, 50*time.Millisecond)
	waitQueueIdle(t, srv)
	for i, v := range victims {
		v.barrier(t)
		n, bytes := v.received()
		sent := len(open([]byte("twelve bytes")))
		t.Logf("victim %d: sent %d bytes, got %d datagrams, %d bytes (x%.1f)", i, sent, n, bytes, float64(bytes)/float64(sent))
		if n != 1 {
			t.Errorf("victim %d got %d datagrams, want the answer only", i, n)
		}
	}
}
