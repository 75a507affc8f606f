package vaultudp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// initiatorState is a peer's side of the handshakes it initiates, as
// crypto/tls keeps a clientHandshakeState: the attempt under way, one at
// a time and started only by wantHelloLocked, and what the attempts left
// behind. Guarded by the peer's mu.
type initiatorState struct {
	// The attempt under way.
	init       *initiation // the hello of this attempt awaiting a reply
	prevInit   *initiation // the one it replaced: a slow reply to it still completes
	initStart  int64       // Conn clock at the first hello of this attempt
	initSent   int64       // Conn clock at the last hello sent
	initiating bool        // a hello is being made (claimHelloLocked)
	answering  *initiation // a reply to it passed its checks and is being answered (handleReply): no hello meanwhile
	deferredAt int64       // Conn clock (|1) at the first hello deferred for a waiting responder session (awaitingConfirmLocked)
	claimGen   uint64      // gen at the claim
	silent     bool        // the attempt began with a silence (timers.go)

	// What the attempts left.
	gen         uint64 // sessions installed, ever
	hellos      int    // hellos sent to it, ever
	failErr     error  // the last attempt's failure, until failedAt+backoff
	failedAt    int64
	lastFailure error // the last failure, kept for PeerInfo
	refused     error // the trust rules refused a hello from the peer's address since its last session
}

// Handshake waits until the peer at addr has a session that it has
// confirmed, starting a handshake if none is under way (also after a
// failed one). When it returns nil, MaxPayloadTo(addr) is final: the
// peer's parameters came inside the handshake. It returns an error
// wrapping ErrHandshakeTimeout if the attempt fails (no answer, or the
// peer never confirmed our final message: its trust rules may refuse our
// key, which it cannot tell us), one wrapping ErrPeerRejected if our
// trust rules refused the peer's key (and ErrPresharedKey if the
// preshared keys differ), ctx's error if ctx ends first. An address that
// is not a peer becomes a learned one, as a write to it would.
func (c *Conn) Handshake(ctx context.Context, addr netip.AddrPort) error {
	if !c.ok() {
		return errZeroConn("handshake")
	}
	addr = normAddr(addr)
	p, err := c.peerFor(addr, originWrite)
	if err != nil {
		return err
	}
	if p.proto != nil {
		return p.proto.handshake(ctx) // protocol v2 (proto_v2.go)
	}
	if p.policy() == Plaintext {
		return fmt.Errorf("%w: %v: policy is plaintext", ErrNoSession, addr)
	}
	started := false
	for {
		p.mu.Lock()
		if p.removed {
			err := p.hs.failErr
			p.mu.Unlock()
			return err
		}
		if s := p.kp.current(); c.usable(s, c.now()) {
			if s.final.Load() == nil {
				p.mu.Unlock()
				return nil
			}
			// Our final message waits for the responder's first sealed
			// datagram (receiveSealed notifies), or fails the attempt
			// (onUnansweredFinal).
			started = true
			ch := p.changedLocked()
			p.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return ctx.Err()
			case <-c.closed:
				return c.opError("handshake", nil, ErrClosed)
			}
		}
		if started && !p.handshakingLocked() && p.hs.failErr != nil {
			err := p.hs.failErr
			p.mu.Unlock()
			return err
		}
		hello := c.wantHelloLocked(p, helloAsked, c.now())
		// Deferred for a waiting responder session (awaitingConfirmLocked):
		// look again when the deferral may have run out.
		var recheck <-chan time.Time
		if !hello && !p.handshakingLocked() {
			recheck = time.After(c.retryAfter()) // collected when it fires or is dropped
		}
		// An attempt of this call's, or one it joined: its failure is
		// this call's. A deferred call has neither yet, and a failure
		// it finds is an earlier attempt's.
		if hello || p.handshakingLocked() {
			started = true
		}
		ch := p.changedLocked()
		p.mu.Unlock()
		if hello {
			c.sendHello(p)
		}
		select {
		case <-ch:
		case <-recheck:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return c.opError("handshake", nil, ErrClosed)
		}
	}
}

// startHandshake starts an initiation with p, a peer just configured,
// as wantHelloLocked allows.
func (c *Conn) startHandshake(p *peer) {
	p.mu.Lock()
	hello := c.wantHelloLocked(p, helloAsked, c.now())
	p.mu.Unlock()
	if hello {
		c.sendHello(p)
	}
}

// Every hello goes through one entry point. A caller says why p needs a
// hello (a helloReason) to wantHelloLocked, under p.mu, which decides
// whether p gets one and claims it (claimHelloLocked); the caller then
// calls sendHello with p.mu released: the key generation and the signature
// run outside every lock the data path takes, and one claim at a time
// means one hello at a time. The callers decide only when (a timer ran
// out, a write found no session); whether is decided here.

// helloReason is why the Conn would send a peer a hello.
type helloReason uint8

const (
	helloAsked   helloReason = iota // the application asked for a session: Handshake, Dial, AddPeer
	helloWrite                      // a write found no session: its datagram waits
	helloOffer                      // Opportunistic: a write went in clear; the Conn offers a session
	helloRekey                      // the current session is due for renewal
	helloReset                      // the peer reset the current session
	helloSilence                    // sealed datagrams went unanswered for SilenceTimeout
	helloRetry                      // this attempt's hello went unanswered for retryAfter
	helloQueued                     // datagrams wait, and no attempt is under way
)

var helloReasons = [...]string{"asked", "write", "offer", "rekey", "reset", "silence", "retry", "queued"}

func (r helloReason) String() string { return helloReasons[r] }

// wantHelloLocked is the one place that decides whether p gets a hello
// now, for the reason why, and if so claims it: the caller sends it
// (sendHello) once p.mu is released. p.mu is held. The rules:
//
//   - a retry only replaces a hello of this attempt, and only to an address
//     that has proved it receives or that the application chose
//     (mayRetryLocked); every other reason needs no attempt under way;
//   - the Conn's own reasons (all but asked and rekey: the application's
//     request, and a session the peer confirmed) need an address the Conn
//     may send a hello to of its own accord (mayInitiateLocked);
//   - an offer waits out the back-off after a failed attempt: a peer that
//     refuses encryption is not an error for Opportunistic;
//   - a reply waiting for the peer's final message defers a hello for a
//     while (awaitingConfirmLocked), but for an offer and a reset, which
//     it cannot serve.
func (c *Conn) wantHelloLocked(p *peer, why helloReason, now int64) bool {
	if p.proto != nil {
		return false // protocol v2 (proto_v2.go): no native handshake
	}
	if why == helloRetry {
		return p.hs.init != nil && p.hs.answering == nil && p.mayRetryLocked() && p.claimHelloLocked()
	}
	if p.handshakingLocked() {
		return false // the attempt under way serves
	}
	switch why {
	case helloAsked, helloRekey:
	case helloOffer:
		if p.hs.failErr != nil && time.Duration(now-p.hs.failedAt) < c.cfg.HandshakeTimeout {
			return false
		}
		if !p.established && p.origin != originConfig && (p.hs.hellos > 0 || p.credit < c.helloWireLen()) {
			// The datagram itself went in clear: the hello is only an
			// offer, and to an address that has not proved it receives
			// it goes once, paid for by what the address sent, whoever
			// wrote to it first. An application that answers forged
			// plaintext must not make the Conn send hellos to the
			// forged sources; and no table of such sources, bounded,
			// can remember them all. The peer that sent enough offers
			// instead, or the application asks (Handshake, AddPeer).
			return false
		}
		fallthrough
	default:
		if !c.mayInitiateLocked(p) {
			return false
		}
	}
	switch why {
	case helloOffer, helloReset:
	default:
		if c.awaitingConfirmLocked(p, now) {
			return false
		}
	}
	return p.claimHelloLocked()
}

// awaitingConfirmLocked reports whether a hello to p is deferred because a
// reply waits for p's final message: p has begun a handshake, and its
// final message is on its way, so a hello of ours would only cross it.
// The deferral lasts retryAfter from the first hello it deferred, not from
// the reply: anyone can forge a hello from p's address, and one every few
// seconds would otherwise keep a reply waiting, and the Conn from ever starting its own handshake with p. p.mu
// is held.
func (c *Conn) awaitingConfirmLocked(p *peer, now int64) bool {
	if p.respNew == nil {
		p.hs.deferredAt = 0
		return false
	}
	if p.hs.deferredAt == 0 {
		p.hs.deferredAt = now | 1
		return true
	}
	return time.Duration(now-p.hs.deferredAt) < c.retryAfter()
}

// claimHelloLocked reserves the making of p's next hello. It reports false
// if one is being made already or p is gone; p.mu is held. A successful
// claim clears the last attempt's failure: a new attempt begins.
func (p *peer) claimHelloLocked() bool {
	if p.hs.initiating || p.removed {
		return false
	}
	p.hs.initiating, p.hs.claimGen = true, p.hs.gen
	p.hs.failErr, p.hs.deferredAt = nil, 0
	return true
}

// mayInitiateLocked reports whether the Conn may send p a hello of its own
// accord (for a write, or a queue that waits): always for a configured
// peer, one the application wrote to first, or one that has had a session;
// never for a peer known only from its hello (a forged hello must not turn
// the Conn against the address it named); for a peer known only from
// plaintext, one hello, and only once that address has sent at least as
// many bytes (no amplification before it answers). p.mu is held.
func (c *Conn) mayInitiateLocked(p *peer) bool {
	switch {
	case p.proto != nil:
		return false // protocol v2 (proto_v2.go): no native handshake
	case p.established || p.origin == originConfig || p.origin == originWrite:
		return true
	case p.origin == originPlaintext:
		return p.hs.hellos == 0 && p.credit >= c.helloWireLen()
	}
	return false
}

// mayRetryLocked reports whether a hello to p that went unanswered may be
// sent again: not to an address that has not proved it receives, unless
// the application chose it. p.mu is held.
func (p *peer) mayRetryLocked() bool {
	return p.established || p.origin == originConfig || p.origin == originWrite
}

// helloWireLen is the length of a hello datagram.
func (c *Conn) helloWireLen() int { return noise.HelloLen }

// handshakingLocked reports whether an initiation is pending or being
// made; p.mu is held.
func (p *peer) handshakingLocked() bool { return p.hs.init != nil || p.hs.initiating }

// sendHello makes a new hello for p, replacing any pending one, and sends
// it. The caller holds a claim (claimHelloLocked) and not p.mu. A retry
// keeps the cookie the responder gave the hello it replaces; the one it
// replaces stays answerable (a slow reply to it still completes).
func (c *Conn) sendHello(p *peer) {
	st, ent, err := c.handshakeEntropy()
	idx := c.index.initiate(p)
	var ni *noise.Initiation
	if err == nil {
		ni, err = noise.NewInitiation(noise.InitiatorConfig{Static: st, Index: idx, PSK: c.pskFor(p), Versions: c.hs.versions, Entropy: ent})
	}
	now := c.now()
	p.mu.Lock()
	p.hs.initiating = false
	if err != nil || p.removed || p.hs.gen != p.hs.claimGen || p.hs.answering != nil {
		// Gone, or a session came while the hello was made (the peer's
		// own handshake, answered here): this attempt is superseded.
		// (The system's random source does not fail; if it did, the
		// attempt's timer would find no hello and the next reason
		// would try again.)
		p.mu.Unlock()
		c.index.forgetIndex(idx)
		if err != nil {
			c.log.Warn("vaultudp: making a hello", "err", err)
		}
		return
	}
	init := &initiation{localIndex: idx, n: ni, hello: bytes.Clone(ni.Hello())}
	c.index.forget(p, p.hs.prevInit)
	old := p.hs.init
	if old == nil {
		p.hs.initStart = now
	} else {
		// A retry: the responder may be under load and want the
		// cookie it gave us back.
		init.setCookie(old.cookie())
	}
	p.hs.prevInit, p.hs.init = old, init
	p.hs.initSent = now
	p.hs.hellos++
	hello, to := init.hello, p.addr
	p.mu.Unlock()
	c.sendRawFrom(to, p.localAddr(), hello)
	// The reply must be read at once even if no application goroutine
	// is reading (reader.go).
	c.wakeBackgroundReader()
	// The path's size, which the session takes (install), is looked up
	// now, while the hello travels, rather than once the reply is in.
	p.helloPath.Store(&pathAt{index: init.localIndex, addr: to, datagram: c.pathDatagram(to)})
}

// pathAt is the largest datagram that reaches addr unfragmented
// (Conn.pathDatagram), looked up when the hello of index was sent.
type pathAt struct {
	index    uint32
	addr     netip.AddrPort
	datagram int
}

// helloPathFor returns the path looked up for init's hello, or nil if
// there is none (yet).
func (p *peer) helloPathFor(init *initiation) *pathAt {
	if pa := p.helloPath.Load(); pa != nil && pa.index == init.localIndex {
		return pa
	}
	return nil
}

// clearInitLocked forgets p's pending initiations.
func (c *Conn) clearInitLocked(p *peer) {
	c.index.forget(p, p.hs.init, p.hs.prevInit)
	p.hs.init, p.hs.prevInit = nil, nil
}

// failLocked ends p's handshake attempt with err (a timeout, or a key the
// trust rules refused): the queue is dropped, and writes in the back-off
// that follows are dropped too (or fail, for a refused key).
func (c *Conn) failLocked(p *peer, now int64, err error) {
	c.clearInitLocked(p)
	if p.hs.silent {
		// The peer has not answered for SilenceTimeout and then a
		// handshake: it is gone (restarted, or another key). Its
		// session would only swallow what is written.
		c.index.remove(p.kp.dropSending()...)
		p.hs.silent = false
	}
	p.hs.failErr, p.hs.lastFailure = err, err
	p.hs.failedAt = now
	p.lastSeen.Store(now) // keep the peer (and its error) a while for writers to see
	c.stats.handshakeFailures.Add(1)
	c.stats.dropHandshakeTimeout.Add(uint64(len(c.takeQueueLocked(p))))
	p.notifyLocked()
	// Logged by the caller once p.mu is released: the handler is the
	// application's code.
}

// handleReply completes our initiation with a reply: the responder's
// identity is checked by the trust rules before anything else, then the
// final message goes out with our parameters and the session is current
// at once, its peer's parameters known (MaxPayloadTo is final). The
// datagram that waited longest rides in the final message when it fits
// there. It runs as a commit, one at a time, in queue order
// (handshake_workers.go): the initiation's state is not safe for
// concurrent use, and an initiator has few replies to read.
func (c *Conn) handleReply(msg []byte) {
	idx, err := noise.ReplyIndex(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return
	}
	p := c.index.initiator(idx)
	if p == nil {
		c.stats.stale.Add(1) // an answer to no hello of ours, or to one completed
		return
	}
	p.mu.Lock()
	init, addr := p.hs.init, p.addr
	if p.hs.prevInit != nil && p.hs.prevInit.localIndex == idx {
		init = p.hs.prevInit // a reply slower than our retry
	}
	p.mu.Unlock()
	if init == nil || init.localIndex != idx {
		c.stats.stale.Add(1)
		return
	}
	rp, err := init.n.ReadReply(msg)
	if err != nil {
		switch {
		case errors.Is(err, noise.ErrPSKMismatch):
			// Genuine up to the preshared key: the keys differ (or an
			// on-path attacker, who could drop the reply anyway, made
			// it). A refusal that lasts: the attempt ends now, and
			// nothing of ours (identity, static key) is sent.
			c.stats.pskMismatch.Add(1)
			ferr := fmt.Errorf("%w: %w: %v: its reply does not decrypt under our preshared key (the two sides hold different keys, or one holds none)", ErrPeerRejected, ErrPresharedKey, addr)
			c.event(Event{Kind: EventFailed, Addr: addr, Err: ferr})
			p.mu.Lock()
			if p.hs.init == init || p.hs.prevInit == init {
				c.failLocked(p, c.now(), ferr)
			}
			p.mu.Unlock()
		case errors.Is(err, noise.ErrState):
			c.stats.stale.Add(1)
		case errors.Is(err, errMalformed):
			c.stats.malformed.Add(1)
		default:
			c.stats.auth.Add(1)
		}
		return
	}
	// Trust is decided on the identity whose signature over the static
	// key verified, before anything is sent under the session.
	if err := c.trust(p, addr, rp.Identity); err != nil {
		// A refusal that lasts: the attempt ends now, and Handshake
		// and writes report it (an on-path attacker, who could drop the
		// reply anyway, can end an attempt this way, no more).
		c.stats.rejected.Add(1)
		c.event(Event{Kind: EventRefused, Addr: addr, Key: rp.Identity, Err: err})
		p.mu.Lock()
		if p.hs.init == init || p.hs.prevInit == init {
			c.failLocked(p, c.now(), err)
		}
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	still := p.hs.init == init || p.hs.prevInit == init
	if still {
		// No hello goes while this reply is answered: the responder
		// keeps replies to two hellos, and a third would push out the
		// one we answer (its final message then finds nothing: under
		// load, answering took longer than a retry interval).
		p.hs.answering = init
		defer func() {
			p.mu.Lock()
			if p.hs.answering == init {
				p.hs.answering = nil
			}
			p.mu.Unlock()
		}()
	}
	p.mu.Unlock()
	if !still {
		c.stats.stale.Add(1)
		return
	}
	ours := c.params(idx, addr)
	final, keys, err := init.n.WriteFinal(&ours)
	if err != nil {
		c.stats.stale.Add(1)
		return
	}
	s, err := newSession(&sessionKeys{
		send: keys.I2R, recv: keys.R2I,
		localIndex: idx, remoteIndex: rp.Index,
		version: ProtocolVersion, initiator: true,
		peerIdentity: rp.Identity,
	}, c.now())
	if err != nil {
		return
	}
	applyParams(s, &rp.Params)
	// Set before the session is current: Handshake returns only once the
	// responder confirmed it (s.final nil again).
	s.final.Store(&final)
	s.finalSent.Store(c.now() | 1)
	wall := c.cfg.now()
	queued := c.install(p, s, rp.Identity, wall, p.helloPathFor(init))
	p.mu.Lock()
	if p.hs.answering == init {
		p.hs.answering = nil // installed: the attempt is over (a hello for a new one may go while what waited is flushed)
	}
	p.mu.Unlock()
	rest := queued
	if len(queued) > 0 {
		if out, ok := c.coalesce(s, final, queued[0]); ok {
			final, rest = out, queued[1:]
			c.countSent(p, len(queued[0]))
		}
	}
	if old := s.final.Load(); old != nil && len(rest) < len(queued) {
		s.final.CompareAndSwap(old, &final) // resent with the datagram it carries, unless confirmed meanwhile
	}
	c.sendRawFrom(addr, p.localAddr(), final)
	c.flush(p, s, addr, rest)
	if len(queued) > 0 && len(rest) == 0 {
		c.endFlush(p)
	}
}

// coalesce returns the final message with b sealed under s after it
// (PROTOCOL.md 9.8), padded as sealed datagrams are so that the whole
// datagram is no longer than a padded sealed one; ok is false if b does
// not fit there (it then goes on its own, after the final message).
func (c *Conn) coalesce(s *session, final, b []byte) (out []byte, ok bool) {
	target := c.padTarget(s)
	if c.cfg.Padding == PadMTU {
		target = min(target, padSmall) // as paddedSize pads a datagram that fits
	}
	room := target - len(final)
	rec := record{payload: b, hasPayload: true}
	natural := sealedOverhead + rec.envelopeLen()
	if natural > room {
		return nil, false
	}
	size := c.cfg.Padding.wireSize(natural, room) - sealedOverhead
	out = make([]byte, len(final), len(final)+sealedOverhead+size)
	copy(out, final)
	var hdr [sealedHeaderLen]byte
	out = rec.appendTo(append(out, hdr[:]...), size)
	sealed, err := s.seal(out[len(final):])
	if err != nil {
		return nil, false
	}
	if s.peer != nil {
		c.markSent(s.peer)
	}
	return append(out[:len(final)], sealed...), true
}

// handleCookie puts a responder's cookie into our hello and sends it
// again at once.
func (c *Conn) handleCookie(msg []byte, from netip.AddrPort) {
	idx, cookie, err := noise.ParseCookie(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return
	}
	p := c.index.initiator(idx)
	if p == nil {
		c.stats.stale.Add(1)
		return
	}
	p.mu.Lock()
	var hello []byte
	// Only the address we sent the hello to may ask for a cookie, and
	// only once per hello (the cookie is then in it).
	if p.hs.init != nil && p.hs.init.localIndex == idx && from == p.addr && !bytes.Equal(p.hs.init.cookie(), cookie) {
		p.hs.init.setCookie(cookie)
		hello = p.hs.init.hello
		p.hs.initSent = c.now()
	}
	to := p.addr
	p.mu.Unlock()
	if hello != nil {
		c.sendRawFrom(to, p.localAddr(), hello)
	}
}
