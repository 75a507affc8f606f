package vaultudp

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// The timer events (timers.go), each driven by a fakeClock: the Conns
// are real, on loopback, and their timers run only when the test moves
// the clock, so a rule that waits seconds takes microseconds to test and
// cannot race the machine's speed.

// TestTimerHandshakeRetryAndTimeout: a hello unanswered for retryAfter
// goes again, and the attempt fails HandshakeTimeout after its first
// hello, with the queued datagram dropped and counted.
func TestTimerHandshakeRetryAndTimeout(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, nil) // HandshakeTimeout 5 s: retryAfter 1 s
	silent := addrOf2(rawUDP(t))
	if _, err := a.WriteToUDPAddrPort([]byte("waits"), silent); err != nil {
		t.Fatal(err)
	}
	if s := peerState(a, silent); s.hellos != 1 || !s.attempt || s.queued != 1 {
		t.Fatalf("after the write: %+v, want one hello and the datagram queued", s)
	}
	clk.advance(t, time.Second-time.Millisecond, 0)
	if s := peerState(a, silent); s.hellos != 1 {
		t.Fatalf("just before retryAfter: %d hellos, want 1", s.hellos)
	}
	clk.advance(t, time.Millisecond, 0)
	if s := peerState(a, silent); s.hellos != 2 {
		t.Fatalf("at retryAfter: %d hellos, want 2", s.hellos)
	}
	clk.advance(t, 4*time.Second-time.Millisecond, 50*time.Millisecond)
	if s := peerState(a, silent); s.failErr != nil || s.hellos != 5 {
		t.Fatalf("just before the timeout: %+v, want 5 hellos and no failure", s)
	}
	clk.advance(t, time.Millisecond, 0)
	s := peerState(a, silent)
	if !errors.Is(s.failErr, ErrHandshakeTimeout) || s.attempt || s.queued != 0 {
		t.Fatalf("at the timeout: %+v, want ErrHandshakeTimeout, no attempt, nothing queued", s)
	}
	if st := a.Stats(); st.HandshakeFailures != 1 || st.Drops.HandshakeTimeout != 1 {
		t.Fatalf("stats: %d failures, %d dropped; want 1, 1", st.HandshakeFailures, st.Drops.HandshakeTimeout)
	}
	// In the back-off that follows, a write is dropped and counted.
	a.WriteToUDPAddrPort([]byte("dropped"), silent)
	if st := a.Stats(); st.Drops.WriteBackoff != 1 {
		t.Fatalf("a write in the back-off: WriteBackoff %d, want 1", st.Drops.WriteBackoff)
	}
}

// TestTimerNoRetryToUnprovedAddress: a hello to an address known only
// from the plaintext it sent is never retried (it has not proved it
// receives), and the peer is forgotten once idle.
func TestTimerNoRetryToUnprovedAddress(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, &Config{Policy: Opportunistic})
	raw := rawUDP(t)
	msg := (&record{payload: make([]byte, 400), hasPayload: true}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
	for range 4 { // 1,600 bytes: a hello (1,360) is paid for
		if _, err := raw.WriteToUDPAddrPort(msg, addrOf(a)); err != nil {
			t.Fatal(err)
		}
		readWithin(t, a, waitLong)
	}
	from := addrOf2(raw)
	a.WriteToUDPAddrPort([]byte("answer"), from) // in clear, and one hello: the bytes received paid for it
	if s := peerState(a, from); s.hellos != 1 {
		t.Fatalf("after the answer: %d hellos, want 1", s.hellos)
	}
	clk.advance(t, 5*time.Second, 100*time.Millisecond)
	if s := peerState(a, from); s.exists && s.hellos != 1 {
		t.Fatalf("after a handshake timeout: %d hellos, want 1", s.hellos)
	}
	clk.advance(t, 5*time.Second, time.Second)
	if s := peerState(a, from); s.exists {
		t.Fatalf("the unproved peer is still there after two handshake timeouts: %+v", s)
	}
}

// TestTimerDeferredHello: a responder session waiting for the peer's
// confirmation defers the Conn's own hello to that peer for retryAfter,
// after which the datagram that waits gets an attempt of its own (the
// queue-waiting event) however often the waiting session is renewed.
func TestTimerDeferredHello(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, nil)
	silent := addrOf2(rawUDP(t))
	p, err := a.peerFor(silent, originWrite)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.respNew = &response{} // as a hello from silent's address leaves
	p.mu.Unlock()
	a.WriteToUDPAddrPort([]byte("waits"), silent)
	if s := peerState(a, silent); s.hellos != 0 || s.queued != 1 {
		t.Fatalf("with a waiting responder session: %+v, want no hello and the datagram queued", s)
	}
	for range 3 {
		clk.advance(t, 300*time.Millisecond, 0)
		p.mu.Lock()
		p.respOld, p.respNew = p.respNew, &response{created: a.now()} // renewed: a forged hello, again
		p.mu.Unlock()
	}
	if s := peerState(a, silent); s.hellos != 0 {
		t.Fatalf("within retryAfter: %d hellos, want 0", s.hellos)
	}
	clk.advance(t, 101*time.Millisecond, 0) // the marks are the clock | 1: a nanosecond late
	if s := peerState(a, silent); s.hellos != 1 {
		t.Fatalf("retryAfter after the first deferral: %d hellos, want 1", s.hellos)
	}
}

// TestTimerUnconfirmedExpiry: a reply whose final message does not come
// is dropped after responseLifetime (HandshakeTimeout, two seconds at
// least: at a timeout of 1 s, two), and the stranger that held it goes
// with it.
func TestTimerUnconfirmedExpiry(t *testing.T) {
	parallel(t)
	for _, tc := range []struct {
		timeout, lifetime time.Duration
	}{{0, 5 * time.Second}, {time.Second, 2 * time.Second}} {
		clk := newFakeClock()
		a := fakeListen(t, clk, &Config{HandshakeTimeout: tc.timeout})
		raw := rawUDP(t)
		if _, err := raw.WriteToUDPAddrPort(helloDatagram(t), addrOf(a)); err != nil {
			t.Fatal(err)
		}
		from := addrOf2(raw)
		pollUntil(waitLong, func() bool { return peerState(a, from).next }) // the hello is handled off this goroutine
		if s := peerState(a, from); !s.next || s.cur {
			t.Fatalf("after the hello: %+v, want a waiting reply only", s)
		}
		if a.HasPeer(from) {
			t.Fatal("a hello alone made a peer")
		}
		clk.advance(t, tc.lifetime-time.Millisecond, 100*time.Millisecond)
		if s := peerState(a, from); !s.next {
			t.Fatalf("HandshakeTimeout %v, before %v: %+v, want it still waiting", tc.timeout, tc.lifetime, s)
		}
		clk.advance(t, time.Millisecond, 0)
		if s := peerState(a, from); s.next || s.exists {
			t.Fatalf("HandshakeTimeout %v, at %v: %+v, want it dropped, and the stranger with it", tc.timeout, tc.lifetime, s)
		}
	}
}

// TestTimerSessionLifetime: with a session and no traffic, the session
// stops carrying writes at 1.5 KeyLifetime and is dropped at its receive
// limit, a handshake timeout later; the learned peer is then forgotten
// (idle for more than a session's lifetime), the configured peer stays.
func TestTimerSessionLifetime(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	cfg := func() *Config {
		return &Config{KeyLifetime: 10 * time.Second, KeepaliveTimeout: -1, SilenceTimeout: -1}
	}
	a, b := fakeListen(t, clk, cfg()), fakeListen(t, clk, cfg())
	if err := a.AddPeer(PeerConfig{Addr: addrOf(b)}); err != nil {
		t.Fatal(err)
	}
	handshakeT(t, a, addrOf(b))
	a.WriteToUDPAddrPort([]byte("confirm"), addrOf(b))
	expectRead(t, b, "confirm", addrOf(a))
	settleSession(t, a, b)
	if s := peerState(b, addrOf(a)); !s.cur {
		t.Fatalf("b: %+v, want a current session", s)
	}
	clk.advance(t, 20*time.Second-time.Millisecond, time.Second)
	if s := peerState(a, addrOf(b)); !s.cur {
		t.Fatalf("a before the receive limit: %+v, want its session", s)
	}
	clk.advance(t, time.Millisecond, 0)
	if s := peerState(a, addrOf(b)); s.cur || !s.configured {
		t.Fatalf("a at the receive limit: %+v, want the session gone, the peer kept", s)
	}
	if s := peerState(b, addrOf(a)); s.exists {
		t.Fatalf("b's learned peer after its lifetime idle: %+v, want forgotten", s)
	}
}

// TestTimerKeepalives: a persistent keepalive goes when nothing went out
// for PeerConfig.Keepalive; a passive one when a payload came in and
// nothing went back for KeepaliveTimeout.
func TestTimerKeepalives(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, &Config{KeepaliveTimeout: -1})
	b := fakeListen(t, clk, &Config{KeepaliveTimeout: 3 * time.Second})
	if err := a.AddPeer(PeerConfig{Addr: addrOf(b), Keepalive: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	handshakeT(t, a, addrOf(b))
	settleSession(t, a, b)
	a.WriteToUDPAddrPort([]byte("payload"), addrOf(b)) // b: a payload came in
	expectRead(t, b, "payload", addrOf(a))
	clk.advance(t, 2*time.Second-time.Millisecond, 500*time.Millisecond)
	if n := a.Stats().KeepalivesSent; n != 0 {
		t.Fatalf("a sent %d keepalives before its interval", n)
	}
	clk.advance(t, 2*time.Millisecond, 0) // the marks are the clock | 1: a nanosecond late
	if n := a.Stats().KeepalivesSent; n != 1 {
		t.Fatalf("a sent %d keepalives at its interval, want 1", n)
	}
	if n := b.Stats().KeepalivesSent; n != 0 {
		t.Fatalf("b sent %d passive keepalives before KeepaliveTimeout", n)
	}
	clk.advance(t, time.Second-2*time.Millisecond, 0)
	if n := b.Stats().KeepalivesSent; n != 0 {
		t.Fatalf("b sent %d passive keepalives before KeepaliveTimeout", n)
	}
	clk.advance(t, 2*time.Millisecond, 0)
	if n := b.Stats().KeepalivesSent; n != 1 {
		t.Fatalf("b sent %d passive keepalives at KeepaliveTimeout, want 1", n)
	}
}

// TestTimerSilence: sealed datagrams went out and nothing authenticated
// came back for SilenceTimeout: a new handshake starts, once.
func TestTimerSilence(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, &Config{SilenceTimeout: 4 * time.Second, KeepaliveTimeout: -1})
	b := fakeListen(t, clk, &Config{KeepaliveTimeout: -1})
	handshakeT(t, a, addrOf(b))
	// A round trip, so that every handshake message has arrived: what
	// comes back from b clears the silence mark.
	a.WriteToUDPAddrPort([]byte("one"), addrOf(b))
	expectRead(t, b, "one", addrOf(a))
	b.WriteToUDPAddrPort([]byte("ack"), addrOf(a))
	expectRead(t, a, "ack", addrOf(b))
	a.WriteToUDPAddrPort([]byte("two"), addrOf(b)) // the first unanswered
	expectRead(t, b, "two", addrOf(a))
	b.Close() // silent from now on
	before := peerState(a, addrOf(b)).hellos
	clk.advance(t, 4*time.Second-time.Millisecond, time.Second)
	if n := a.Stats().Silences; n != 0 {
		t.Fatalf("%d silences before SilenceTimeout", n)
	}
	clk.advance(t, 2*time.Millisecond, 0) // the marks are the clock | 1: a nanosecond late
	if n, h := a.Stats().Silences, peerState(a, addrOf(b)).hellos; n != 1 || h != before+1 {
		t.Fatalf("at SilenceTimeout: %d silences, %d hellos; want 1, %d", n, h, before+1)
	}
}

// TestSendableDuringRekey: while the responder has not confirmed a rekey
// (the initiator's final message may be lost, and the responder cannot
// open what is sealed under the new session before it arrives), writes
// and keepalives go under the session it renews; once confirmed, under
// the new one; a rekey never confirmed is abandoned for the old session.
func TestSendableDuringRekey(t *testing.T) {
	parallel(t)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	p := c.newPeer(netip.MustParseAddrPort("127.0.0.1:9"), nil)
	old, renewed := &session{initiator: true}, &session{initiator: true}
	final := []byte("final")
	renewed.final.Store(&final)
	p.kp.promote(old, false)
	p.kp.promote(renewed, false)
	if got := c.sendable(p, p.kp.current(), 0); got != old {
		t.Fatal("an unconfirmed rekey is sealed under before the responder has it")
	}
	renewed.final.Store(nil) // the responder's first datagram under it opened
	if got := c.sendable(p, p.kp.current(), 0); got != renewed {
		t.Fatal("a confirmed rekey is not used")
	}
	renewed.final.Store(&final)
	p.kp.abandon(renewed)
	if p.kp.current() != old || p.kp.previous() != nil {
		t.Fatal("an abandoned rekey did not give the current slot back to the session it renewed")
	}
	// A first session has nothing to fall back on: it is used (the
	// responder holds a few datagrams that come before the final).
	first := &session{initiator: true}
	first.final.Store(&final)
	q := c.newPeer(netip.MustParseAddrPort("127.0.0.1:10"), nil)
	q.kp.promote(first, false)
	if got := c.sendable(q, first, 0); got != first {
		t.Fatal("a first unconfirmed session is not used")
	}
}

// TestTimerDeferredRekey: a rekey that a write asked for while a reply
// waited for its final message is asked for again by the timer once the
// deferral has run out, with no further write.
func TestTimerDeferredRekey(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, &Config{KeepaliveTimeout: -1, SilenceTimeout: -1})
	b := fakeListen(t, clk, &Config{KeepaliveTimeout: -1, SilenceTimeout: -1})
	handshakeT(t, a, addrOf(b))
	settleSession(t, a, b)
	p := peerOf(a, addrOf(b))
	p.mu.Lock()
	p.respNew = &response{created: a.now()} // a reply waits for b's final message
	p.mu.Unlock()
	sessionOf(t, a, addrOf(b)).sendCounter.Store(rekeyAfterMessages)
	before := peerState(a, addrOf(b)).hellos
	a.WriteToUDPAddrPort([]byte("wants a rekey"), addrOf(b))
	if h := peerState(a, addrOf(b)).hellos; h != before {
		t.Fatalf("the rekey was not deferred: %d hellos, want %d", h, before)
	}
	clk.advance(t, time.Second+time.Millisecond, 100*time.Millisecond) // retryAfter: 1 s
	if h := peerState(a, addrOf(b)).hellos; h != before+1 {
		t.Fatalf("after the deferral: %d hellos, want %d (the timer asks again)", h, before+1)
	}
}

// TestTimerReplacement: a client restarts on its port with a new key
// (trust on first use is the server's only rule). Its final message finds
// the old identity's session: the server keeps what the final message
// revealed and challenges the old identity; liveWait (500 ms at the
// default timeout) after the unanswered challenge, the server's own
// timer judges the kept final message again and the new identity takes
// the address, without the client sending anything more (its clock does
// not move here, so it never retries).
func TestTimerReplacement(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	s := fakeListen(t, clk, nil)
	c1, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	handshakeT(t, c1, addrOf(s))
	port := addrOf(c1)
	c1.Close()
	c2 := restartOn(t, port, &Config{clock: newFakeClock()})
	closeAtEnd(t, c2)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		done <- c2.Handshake(ctx, addrOf(s))
	}()
	if took, ok := waitFor(waitLong, func() bool { return s.Stats().Drops.Rejected == 1 }); !ok {
		t.Fatalf("the new identity's final message was not held for judging after %v: %+v", took, s.Stats())
	}
	clk.advance(t, 450*time.Millisecond, 50*time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the handshake ended before liveWait: %v", err)
	default:
	}
	if !bytes.Equal(keyAt(s, port), c1.PublicKey()) {
		t.Fatalf("the new identity took the address before liveWait")
	}
	clk.advance(t, 50*time.Millisecond+time.Nanosecond, 0) // the challenge's mark is the clock | 1
	if err := <-done; err != nil {
		t.Fatalf("after liveWait: %v (server %+v)", err, s.Stats())
	}
	if !bytes.Equal(keyAt(s, port), c2.PublicKey()) {
		t.Errorf("the server's peer at %v has the old key", port)
	}
}

// TestLostFinalShortServerTimeout: a server with a handshake timeout of
// 1 s, a client with the default 5 s (a retry every second), and the
// client's first final message lost on the path. Its resend, a second
// later, still finds the server's reply, and the handshake completes
// (before, the reply had been dropped at 1 s: the resend was stale, and
// the client resent it to nothing until its attempt failed). Both clocks
// are the test's.
func TestLostFinalShortServerTimeout(t *testing.T) {
	parallel(t)
	clkS, clkC := newFakeClock(), newFakeClock()
	s := fakeListen(t, clkS, &Config{HandshakeTimeout: time.Second})
	c := fakeListen(t, clkC, nil)
	r := newRelay(t, addrOf(c), addrOf(s))
	var finals atomic.Int32
	r.setRewrite(func(p []byte, toB bool) [][]byte {
		if toB && len(p) > 1 && p[1] == typeFinal && finals.Add(1) == 1 {
			return nil // the first final message is lost
		}
		return [][]byte{p}
	})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		done <- c.Handshake(ctx, r.addr())
	}()
	if took, ok := waitFor(waitLong, func() bool { return finals.Load() == 1 }); !ok {
		t.Fatalf("no final message after %v", took)
	}
	clkS.advance(t, 1100*time.Millisecond, 100*time.Millisecond) // past the server's HandshakeTimeout
	clkC.advance(t, 1100*time.Millisecond, 100*time.Millisecond) // the client's final retry, at 1 s
	if err := <-done; err != nil {
		t.Fatalf("handshake: %v (server %+v)", err, s.Stats())
	}
	if n := finals.Load(); n != 2 {
		t.Errorf("%d final messages, want 2 (one lost, one resent)", n)
	}
}

// TestTimerNoRetryWhileAnswering: while a reply to this attempt's hello is
// being answered (handleReply, past its checks), the retry timer sends no
// hello: the responder keeps replies to two hellos, and a third pushes
// out the one being answered (under load, answering took longer than a
// retry interval, and the final message then found nothing: the proxy's
// 300-client burst lost a few clients that way).
func TestTimerNoRetryWhileAnswering(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, nil) // retryAfter 1 s
	silent := addrOf2(rawUDP(t))
	if _, err := a.WriteToUDPAddrPort([]byte("waits"), silent); err != nil {
		t.Fatal(err)
	}
	p := peerOf(a, silent)
	p.mu.Lock()
	p.hs.answering = p.hs.init
	p.mu.Unlock()
	clk.advance(t, 2*time.Second, 100*time.Millisecond)
	if s := peerState(a, silent); s.hellos != 1 {
		t.Fatalf("%d hellos while a reply is answered, want 1", s.hellos)
	}
	p.mu.Lock()
	p.hs.answering = nil // the reply came to nothing
	p.mu.Unlock()
	clk.advance(t, 100*time.Millisecond, 0)
	if s := peerState(a, silent); s.hellos != 2 {
		t.Fatalf("%d hellos once no reply is answered, want 2 (the retry)", s.hellos)
	}
}
