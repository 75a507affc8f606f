package vaultudp

import (
	"fmt"
	"net/netip"
	"time"
)

// The timers. Every timed rule of a peer is one named event below, run on
// each tick of the Conn's coarse clock (housekeepingEvery) with the peer's
// lock held; an event that needs a hello claims it, and the hello is made
// and sent after the lock is released (sendHello).
//
//	handshake retry      a hello unanswered for retryAfter is sent again
//	handshake timeout    an attempt unanswered for HandshakeTimeout fails
//	session expiry       a session past its receive limit is dropped
//	unconfirmed expiry   a reply whose final message did not come within
//	                     responseLifetime (HandshakeTimeout, 2 s at least)
//	                     is dropped
//	path timeout         a path or liveness challenge unanswered for
//	                     HandshakeTimeout is abandoned (path.go)
//	replacement          a new identity's final message waits at a learned
//	                     peer's address whose liveness challenge went
//	                     unanswered for liveWait: judged again (path.go)
//	queue attempt        datagrams wait and no attempt is under way
//	deferred rekey       a rekey a write asked for was deferred: asked again
//	silence              sealed datagrams went out and nothing authenticated
//	                     came back for SilenceTimeout: a new handshake
//	final retry          the initiator's final message is unanswered (no
//	                     sealed datagram from the responder opened): sent
//	                     again, and the session given up after
//	                     HandshakeTimeout (the responder refused it)
//	keepalive            passive: a payload came in and nothing went back
//	                     for KeepaliveTimeout; persistent: nothing went out
//	                     for PeerConfig.Keepalive. An empty sealed datagram.
//	forget               a learned peer with nothing left is forgotten when
//	                     idle (a session lifetime if it ever had a session,
//	                     HandshakeTimeout otherwise)
//
// Conn-wide: the ProtocolV2 peers' timers run.

// tick runs the timers once.
func (c *Conn) tick() {
	now := c.now()
	ps := c.peers.snapshot()
	var idle []*peer
	for _, p := range ps {
		p.mu.Lock()
		wasUp := p.kp.current() != nil
		hello, failed := c.onHandshakeTimer(p, now)
		c.onSessionExpiry(p, now)
		c.onUnconfirmedExpiry(p, now)
		c.onPathTimeout(p, now)
		again := c.onLivenessUnanswered(p, now)
		var finals [][]byte
		for _, r := range again {
			finals = append(finals, r.result.msg3)
		}
		hello = c.onQueueWaiting(p, now) || hello
		hello = c.onDeferredRekey(p, now) || hello
		hello = c.onSilence(p, now) || hello
		fin, finFailed := c.onUnansweredFinal(p, now)
		if failed == nil {
			failed = finFailed
		}
		ka := c.onKeepalive(p, now)
		if c.onIdle(p, now) {
			idle = append(idle, p)
		}
		to, key := p.addr, p.identity
		if key == nil {
			key = p.pinned
		}
		down := wasUp && p.kp.current() == nil
		p.mu.Unlock()
		// Reported with no lock held: the handler is the application's code.
		if failed != nil {
			c.event(Event{Kind: EventFailed, Addr: to, Key: key, Err: failed})
		}
		if down {
			why := errSessionsExpired
			if failed != nil {
				why = failed // silent through a handshake (failLocked)
			}
			c.event(Event{Kind: EventDown, Addr: to, Key: key, Err: why})
		}
		if hello {
			c.sendHello(p)
		}
		if ka != nil {
			c.sendKeepalive(p, ka, to)
		}
		if fin != nil {
			c.sendRawFrom(to, p.localAddr(), fin)
		}
		for i, r := range again {
			c.queueHandshake(finals[i], r.from, r.local)
		}
	}
	if len(idle) > 0 {
		var forgotten []netip.AddrPort
		c.peers.mu.Lock()
		for _, p := range idle {
			if c.peers.getLocked(p.addr) == p {
				c.dropPeerTableLocked(p, fmt.Errorf("%w: %v was idle", ErrUnknownPeer, p.addr))
				forgotten = append(forgotten, p.addr)
			}
		}
		c.peers.mu.Unlock()
		for _, a := range forgotten {
			c.event(Event{Kind: EventForgotten, Addr: a})
		}
	}
	c.sweepStrangers(now) // replies to hellos from no peer (handshake_responder.go)
	c.v2Tick(now)         // protocol v2 key exchanges (proto_v2.go)
}

// markSent marks a sealed datagram sent to p, for the keepalive and
// silence timers. Mostly loads: the data path writes a mark only when it
// changes.
func (c *Conn) markSent(p *peer) {
	now := c.now() | 1
	if p.sentAt.Load() != now {
		p.sentAt.Store(now)
	}
	if p.unanswered.Load() == 0 {
		p.unanswered.CompareAndSwap(0, now)
	}
	if p.dataIn.Load() != 0 {
		p.dataIn.Store(0)
	}
}

// markReceived marks an authenticated datagram received from p (with a
// payload, if data).
func (c *Conn) markReceived(p *peer, data bool) {
	if p.unanswered.Load() != 0 {
		p.unanswered.Store(0)
	}
	if data && p.dataIn.Load() == 0 {
		p.dataIn.CompareAndSwap(0, c.now()|1)
	}
}

// onSilence: the Conn sent sealed datagrams and heard nothing
// authenticated for SilenceTimeout: a new handshake, the session going on
// meanwhile. It reports whether it claimed a hello.
func (c *Conn) onSilence(p *peer, now int64) bool {
	u := p.unanswered.Load()
	if c.cfg.SilenceTimeout < 0 || u == 0 || time.Duration(now-u) < c.cfg.SilenceTimeout {
		return false
	}
	if p.kp.current() == nil || p.handshakingLocked() {
		return false
	}
	p.unanswered.Store(now | 1) // once per silence: the handshake has its own timeout
	if !c.wantHelloLocked(p, helloSilence, now) {
		return false
	}
	p.hs.silent = true // if this attempt fails too, the session is given up (failLocked)
	c.stats.silences.Add(1)
	return true
}

// onUnansweredFinal: the initiator's final message is confirmed by the
// first sealed datagram from the responder that opens under the session;
// while none has, it is sent again every retry interval. After a
// handshake timeout with none the responder has refused our key (which
// it does silently) or never got it: the session is given up and the
// attempt fails (failLocked), as a hello never answered does. fin is the
// final message to send again, or nil; failed the attempt's failure, if
// it ended it.
func (c *Conn) onUnansweredFinal(p *peer, now int64) (fin []byte, failed error) {
	s := p.kp.current()
	if s == nil || !s.initiator {
		return nil, nil
	}
	f := s.final.Load()
	if f == nil {
		return nil, nil
	}
	if time.Duration(now-s.created) >= c.cfg.HandshakeTimeout {
		s.final.Store(nil)
		p.kp.abandon(s) // a rekey's: the session it renewed serves again
		c.index.remove(s)
		err := fmt.Errorf("%w: %v never confirmed the session after %v (its trust rules may refuse our key)", ErrHandshakeTimeout, p.addr, c.cfg.HandshakeTimeout)
		c.failLocked(p, now, err)
		return nil, err
	}
	if time.Duration(now-s.finalSent.Load()) >= c.retryAfter() {
		s.finalSent.Store(now | 1)
		return *f, nil
	}
	return nil, nil
}

// onKeepalive: a passive keepalive (data came in, nothing went back for
// KeepaliveTimeout) or a persistent one (nothing went out for
// PeerConfig.Keepalive). It returns the session to send it under, or nil.
func (c *Conn) onKeepalive(p *peer, now int64) *session {
	s := p.kp.current()
	if !c.usable(s, now) {
		return nil
	}
	if d := p.dataIn.Load(); d != 0 && c.cfg.KeepaliveTimeout > 0 && time.Duration(now-d) >= c.cfg.KeepaliveTimeout {
		return c.sendable(p, s, now) // not a rekey the responder has not confirmed
	}
	if p.keepalive > 0 && time.Duration(now-p.sentAt.Load()) >= p.keepalive {
		return c.sendable(p, s, now) // not a rekey the responder has not confirmed
	}
	return nil
}

// sendKeepalive sends an empty sealed datagram under s to p.
func (c *Conn) sendKeepalive(p *peer, s *session, to netip.AddrPort) {
	if err := c.sendSealed(s, to, nil, false, nil); err != nil {
		c.log.Debug("vaultudp: keepalive", "peer", to, "err", err)
		return
	}
	c.stats.keepalivesSent.Add(1)
}

// retryAfter is how long a hello waits for its reply before it is sent
// again: a fifth of the handshake timeout, within [100 ms, 1 s].
func (c *Conn) retryAfter() time.Duration {
	return min(max(c.cfg.HandshakeTimeout/5, 100*time.Millisecond), time.Second)
}

// onHandshakeTimer: handshake retry and handshake timeout. It reports
// whether it claimed a hello, and the attempt's failure if it ended it.
func (c *Conn) onHandshakeTimer(p *peer, now int64) (hello bool, failed error) {
	if p.hs.init == nil || p.hs.initiating {
		return false, nil
	}
	switch {
	case time.Duration(now-p.hs.initStart) >= c.cfg.HandshakeTimeout:
		err := fmt.Errorf("%w: no session with %v after %v", ErrHandshakeTimeout, p.addr, c.cfg.HandshakeTimeout)
		if p.hs.refused != nil {
			// The peer's own hellos came with a key the trust rules
			// refuse: that is why (a hello alone does not end the
			// attempt: anyone can send one from the peer's address).
			err = fmt.Errorf("%w; %w", err, p.hs.refused)
		}
		err = &timeoutError{err}
		c.failLocked(p, now, err)
		return false, err
	case time.Duration(now-p.hs.initSent) >= c.retryAfter():
		return c.wantHelloLocked(p, helloRetry, now), nil
	}
	return false, nil
}

// onSessionExpiry: sessions past their receive limit are dropped.
func (c *Conn) onSessionExpiry(p *peer, now int64) {
	c.index.remove(p.kp.expire(now, c.receiveLimit())...)
}

// onUnconfirmedExpiry: replies whose final message did not come within
// a handshake timeout are dropped (the initiator refused us, its
// preshared key differs, or the hello was a replay).
func (c *Conn) onUnconfirmedExpiry(p *peer, now int64) {
	if c.expireResponsesLocked(p, now) {
		p.notifyLocked() // Handshake callers wait on it
	}
}

// onQueueWaiting: datagrams wait with no session and no attempt under
// way; they get an attempt of their own. It reports whether it claimed a
// hello.
func (c *Conn) onQueueWaiting(p *peer, now int64) bool {
	return len(p.queue) > 0 && p.kp.current() == nil && c.wantHelloLocked(p, helloQueued, now)
}

// onDeferredRekey: a rekey a write asked for was deferred for a reply
// waiting for its final message (awaitingConfirmLocked). Only writes ask
// for rekeys, and none may come soon: the timer asks again, and gets it
// once the deferral has run out. It reports whether it claimed a hello.
func (c *Conn) onDeferredRekey(p *peer, now int64) bool {
	s := p.kp.current()
	return p.hs.deferredAt != 0 && c.usable(s, now) && c.needsRekey(s, now) && c.wantHelloLocked(p, helloRekey, now)
}

// onIdle: a learned peer with no session and no attempt is forgotten when
// idle: after a session's lifetime, or after a handshake timeout if it
// never confirmed a session (a forged or abandoned hello must not hold a
// slot).
func (c *Conn) onIdle(p *peer, now int64) bool {
	if p.configured || p.handshakingLocked() || p.respNew != nil || !p.kp.empty() {
		return false
	}
	idleFor := rejectAfter(c.cfg.KeyLifetime)
	if !p.established {
		idleFor = c.cfg.HandshakeTimeout
	}
	return time.Duration(now-p.lastSeen.Load()) >= idleFor
}

// housekeeping runs the Conn's timers on each of ticks until Close, then
// stops them. The ticker is made before the goroutine starts, so that a
// test's clock has it from the Conn's first moment.
func (c *Conn) housekeeping(ticks <-chan time.Time, stop func()) {
	defer c.wg.Done()
	defer stop()
	for {
		select {
		case <-c.closed:
			return
		case <-ticks:
			c.clock.Store(int64(c.clk.since()))
			c.tick()
			c.clk.ticked()
		}
	}
}

// housekeepingEvery is the tick of the Conn's timer goroutine: its coarse
// clock, handshake retries and timeouts, session expiry.
const housekeepingEvery = 50 * time.Millisecond
