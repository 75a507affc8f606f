package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// prepareHello answers a hello from from that arrived at local: its
// costly step (Noise message 2) now, on a handshake worker, and the
// returned commit, in its turn (handshake_workers.go), keeps the
// response and sends the reply. Nothing about the initiator's identity
// is known yet: the reply reveals ours (to holders of the preshared key,
// if one is set) and the Noise state waits for the final message, where
// trust is decided. It returns nil if there is nothing to commit.
func (c *Conn) prepareHello(msg []byte, from netip.AddrPort, local netip.Addr) func() {
	h, err := noise.ParseHello(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return nil
	}
	// The reader applied the cookie rule already (helloGate): under
	// load, only a hello with its source's cookie comes here.
	c.peers.mu.RLock()
	pr := c.peers.getLocked(from)
	holder := pr // the peer or stranger that keeps replies to from
	if holder == nil {
		holder = c.peers.strangerLocked(from)
	}
	full := holder == nil && c.peers.strangersFullLocked()
	c.peers.mu.RUnlock()
	if full {
		// Refused before any costly work: a flood of hellos from new
		// addresses cannot buy handshakes once the table is full.
		c.stats.peerLimit.Add(1)
		return nil
	}
	if c.policyFor(pr) == Plaintext {
		c.stats.policy.Add(1)
		return nil
	}
	if holder != nil {
		holder.mu.Lock()
		dup := holder.answeredLocked(h.SenderIndex, h.Ephemeral())
		holder.mu.Unlock()
		if dup {
			c.stats.stale.Add(1) // answered already (commitHello checks again)
			return nil
		}
	}
	if pr != nil {
		pr.mu.Lock()
		// Both sides sent hellos at once: the greater ephemeral key
		// initiates, the other answers (PROTOCOL.md 9.9). The
		// initiation's ephemeral key never changes once it is made.
		keep := pr.hs.init != nil && pr.hs.init.n.KeepsInitiating(h)
		pr.mu.Unlock()
		if keep {
			return nil
		}
	}
	st, ent, err := c.handshakeEntropy()
	if err != nil {
		return nil
	}
	idx := c.index.reserve()
	c.stats.verifications.Add(1)
	resp, reply, err := noise.Respond(h, noise.ResponderConfig{
		Static:   st,
		Index:    idx,
		Versions: c.hs.versions,
		PSK:      c.pskFor(pr),
		Params:   c.params(idx, from),
		Entropy:  ent,
	})
	if err != nil {
		c.index.release(idx)
		if errors.Is(err, errAuth) {
			c.stats.auth.Add(1)
		} else {
			c.stats.malformed.Add(1)
		}
		return nil
	}
	r := &response{r: resp, localIndex: idx, from: from, local: local}
	copy(r.helloEph[:], h.Ephemeral())
	return func() { c.commitHello(r, reply) }
}

// commitHello keeps r, the response to a hello, on the peer at its
// address (or on a stranger, outside the table) and sends its reply.
func (c *Conn) commitHello(r *response, reply []byte) {
	from, idx := r.from, r.localIndex
	r.created = c.now()
	c.peers.mu.Lock()
	pr := c.peers.getLocked(from)
	if pr == nil {
		// No peer yet: the reply waits on a stranger, outside the
		// table, until a final message completes it (a replayed or
		// forged hello, which cannot, leaves nothing in the table).
		if pr = c.peers.strangerLocked(from); pr == nil {
			if c.peers.strangersFullLocked() {
				c.peers.mu.Unlock()
				c.index.release(idx)
				c.stats.peerLimit.Add(1)
				return
			}
			pr = c.newPeer(from, nil)
			pr.origin = originHello
			c.peers.addStrangerLocked(pr)
		}
	}
	c.peers.mu.Unlock()
	pr.mu.Lock()
	if pr.removed {
		pr.mu.Unlock()
		c.index.release(idx)
		return
	}
	if pr.answeredLocked(r.r.RemoteIndex(), r.helloEph[:]) {
		// The same hello, prepared twice at once on two workers.
		pr.mu.Unlock()
		c.index.release(idx)
		c.stats.stale.Add(1)
		return
	}
	c.addResponseLocked(pr, r)
	pr.mu.Unlock()
	c.sendRawFrom(from, r.local, reply)
	// The path's size, which the session takes, is looked up (a system
	// call) while the reply travels, not once the final message is in.
	// Read under the peer's lock, with the response.
	path := c.pathDatagram(from)
	pr.mu.Lock()
	r.path = path
	pr.mu.Unlock()
}

// answeredLocked reports whether a reply waiting on p answers the hello
// whose sender index is sender and ephemeral key eph: the same hello
// again, sent again with a new cookie, duplicated, or replayed from p's
// address. It is not answered twice: the initiator accepts a reply to
// either of its two newest hellos, and p keeps replies to two hellos, so a
// second reply to one of them must not push out the reply to the other,
// which the initiator may be answering (a client whose hello went again
// with a second cookie under load answered the reply pushed out, and its
// final message found nothing, until its attempt failed). The index alone
// does not name the hello: an on-path attacker who got a hello of its own
// with a client's index to the server first made the client's real hello
// "answered" (TestReview7RacedSameIndexHello). p.mu is held.
func (p *peer) answeredLocked(sender uint32, eph []byte) bool {
	for _, r := range []*response{p.respNew, p.respOld} {
		if r != nil && r.r.RemoteIndex() == sender && bytes.Equal(r.helloEph[:], eph) {
			return true
		}
	}
	return false
}

// addResponseLocked keeps r, a reply sent for p, waiting for its final
// message. The one before stays too (the initiator may have retried
// before our reply reached it, and then answers that one); the one before
// that goes. p.mu is held.
func (c *Conn) addResponseLocked(p *peer, r *response) {
	c.index.respond(r.localIndex, p)
	if old := p.respOld; old != nil {
		c.dropHeldResponse(old)
		c.index.dropResponse(old.localIndex)
	}
	p.respOld, p.respNew = p.respNew, r
	p.lastSeen.Store(c.now())
}

// takeResponseLocked takes r out of p's waiting responses; it reports
// whether r was there. The caller releases or reuses its index. p.mu is
// held.
func (p *peer) takeResponseLocked(r *response) bool {
	switch r {
	case p.respNew:
		p.respNew, p.respOld = p.respOld, nil
	case p.respOld:
		p.respOld = nil
	default:
		return false
	}
	return true
}

// clearResponsesLocked forgets p's waiting responses; p.mu is held.
func (c *Conn) clearResponsesLocked(p *peer) {
	for _, r := range []*response{p.respNew, p.respOld} {
		if r != nil {
			c.dropHeldResponse(r)
			c.index.dropResponse(r.localIndex)
		}
	}
	p.respNew, p.respOld = nil, nil
}

// responseLifetime is how long a reply waits for its final message: the
// handshake timeout, and two seconds at least. The initiator sends a lost
// final message again every retry interval of its own (a second at most:
// retryAfter), which this Conn does not know; a reply that waits two
// seconds sees at least one resend whatever the two sides' timeouts.
// (With a handshake timeout of 1 s here and the default 5 s there, the
// resend came just after the reply was dropped, and the initiator resent
// it to nothing until its attempt failed.)
func (c *Conn) responseLifetime() time.Duration {
	return max(c.cfg.HandshakeTimeout, 2*time.Second)
}

// expireResponsesLocked drops the responses older than responseLifetime:
// their initiator never finished (it refused us, its keys differ, or the
// hello was a replay). It reports whether any went. p.mu is held.
func (c *Conn) expireResponsesLocked(p *peer, now int64) bool {
	gone := false
	for _, r := range []*response{p.respOld, p.respNew} {
		if r != nil && now-r.created >= int64(c.responseLifetime()) {
			p.takeResponseLocked(r)
			c.dropHeldResponse(r)
			c.index.dropResponse(r.localIndex)
			gone = true
		}
	}
	return gone
}

// finalResult is what a final message revealed, kept with its response
// while the trust rules wait for an old identity's liveness answer
// (PROTOCOL.md 5.16): the initiator sends the same final message again,
// and it is judged again without the handshake's cost.
type finalResult struct {
	msg3 []byte
	peer *noise.Peer
	keys *noise.Keys
}

// prepareFinal reads a final message, the initiator's identity and
// parameters, on a handshake worker (its DH and signature check), and
// returns the commit that completes the response, in its turn
// (handshake_workers.go): the identity passes the trust rules (and the
// rules of a new identity at a learned peer's address), the session
// becomes current and confirmed, the datagrams that waited for the peer
// go (or a keepalive, which confirms the session to the initiator), and
// the sealed datagram coalesced in the final message is received as any
// other. It returns nil if there is nothing to commit.
func (c *Conn) prepareFinal(msg []byte, from netip.AddrPort, local netip.Addr) func() {
	f, err := noise.ParseFinal(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return nil
	}
	p := c.index.responder(f.ReceiverIndex)
	if p == nil {
		if s := c.index.lookup(f.ReceiverIndex); s != nil && !s.initiator && s.peer != nil {
			return func() { c.finalAgain(s, f.Sealed, from, local) } // our confirmation was lost
		}
		c.stats.stale.Add(1)
		return nil
	}
	p.mu.Lock()
	r := p.responseLocked(f.ReceiverIndex)
	var res *finalResult
	if r != nil {
		res = r.result
	}
	p.mu.Unlock()
	if r == nil {
		c.stats.stale.Add(1)
		return nil
	}
	msg3 := msg[:len(msg)-len(f.Sealed)]
	if res == nil {
		// The response's own lock: another worker may read the same
		// final message, sent again, at once.
		r.mu.Lock()
		pi, keys, err := r.r.ReadFinal(f)
		r.mu.Unlock()
		if err != nil {
			switch {
			case errors.Is(err, noise.ErrState):
				c.stats.stale.Add(1)
			case errors.Is(err, errMalformed):
				c.stats.malformed.Add(1)
			default:
				c.stats.auth.Add(1)
			}
			return nil
		}
		res = &finalResult{msg3: bytes.Clone(msg3), peer: pi, keys: keys}
	} else if !bytes.Equal(res.msg3, msg3) {
		c.stats.stale.Add(1) // the state is consumed: only the same message counts again
		return nil
	}
	return func() { c.commitFinal(p, r, res, f.Sealed, from, local) }
}

// commitFinal completes r, p's response, with res, what its final
// message revealed; sealed is the datagram coalesced after it.
func (c *Conn) commitFinal(p *peer, r *response, res *finalResult, sealed []byte, from netip.AddrPort, local netip.Addr) {
	id := res.peer.Identity
	// A learned peer whose old identity did not answer a liveness
	// challenge (path.go): perhaps a client that restarted with a new
	// key. The new identity takes the address only if the old one stays
	// silent (installResponder).
	candidate := c.tofuOnly(p) && !p.hasIdentity(id)
	replacing := candidate && c.replaceable(p)
	if err := c.trust(p, r.from, id); err != nil && !replacing {
		c.stats.rejected.Add(1)
		p.mu.Lock()
		p.hs.lastFailure, p.hs.refused = err, err
		if candidate {
			// Judged again once the liveness challenge has had its
			// time (onLivenessUnanswered), or when the initiator
			// sends its final message again. The datagram coalesced
			// in it waits with the response, as those that came after
			// it do: the initiator counts it sent, and a judgment by
			// the timer has no resend to bring it again.
			r.result = res
			c.holdCoalescedLocked(r, sealed, from, local)
		} else if p.takeResponseLocked(r) {
			c.dropHeldResponse(r)
			c.index.dropResponse(r.localIndex)
		}
		p.mu.Unlock()
		c.event(Event{Kind: EventRefused, Addr: r.from, Key: id, Err: err})
		return
	}
	s, err := newSession(&sessionKeys{
		send: res.keys.R2I, recv: res.keys.I2R,
		localIndex: r.localIndex, remoteIndex: r.r.RemoteIndex(),
		version: ProtocolVersion, initiator: false,
		peerIdentity: id,
	}, c.now())
	if err != nil {
		return
	}
	applyParams(s, &res.peer.Params)
	p, adopted := c.adoptStranger(p)
	if !adopted {
		return
	}
	queued, held, to, ok := c.installResponder(p, s, r, id, c.cfg.now())
	if !ok {
		return
	}
	if from == to {
		// The final message proved this address: answers leave from
		// where it arrived, as after any authenticated datagram from
		// there (receiveSealed).
		p.setLocal(local)
	}
	// The initiator's first datagrams first (what waits for a reader),
	// then the confirmation: what waited here, or a keepalive, to the
	// peer's validated address.
	if len(sealed) > 0 {
		c.receiveCoalesced(sealed, from, local)
	}
	for _, q := range held {
		if !c.receive(q) {
			c.putPacket(q)
		}
	}
	if len(held) > 0 {
		c.kickDirectReader() // as receiveCoalesced
	}
	if len(queued) > 0 {
		c.flush(p, s, to, queued)
	} else {
		c.sendConfirm(s, to)
	}
	s.finalAcked.Store(c.now() | 1)
}

// adoptStranger makes p, a stranger whose reply a final message just
// completed, a learned peer in the table, and returns it; a peer that is
// in the table already is returned as it is. ok is false if the table
// has no room (MaxPeers), or another peer took the address meanwhile:
// the initiator's next attempt finds that one.
func (c *Conn) adoptStranger(p *peer) (*peer, bool) {
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stranger {
		return p, true
	}
	if c.peers.strangerLocked(p.addr) != p || c.peers.getLocked(p.addr) != nil || c.peers.learnedFullLocked() {
		c.stats.peerLimit.Add(1)
		return nil, false
	}
	c.peers.takeStrangerLocked(p.addr)
	p.stranger = false
	c.peers.insertLocked(p)
	return p, true
}

// sweepStrangers drops the replies to strangers that waited past the
// handshake timeout, and the strangers left with none (timers.go).
func (c *Conn) sweepStrangers(now int64) {
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	for addr, p := range c.peers.strangers {
		p.mu.Lock()
		c.expireResponsesLocked(p, now)
		if p.respNew == nil {
			c.peers.takeStrangerLocked(addr)
			p.stranger = false
			p.closeLocked(ErrUnknownPeer)
		}
		p.mu.Unlock()
	}
}

// holdForResponse keeps p, a sealed datagram for index idx, if idx is a
// reply's waiting for its final message: the initiator may send under the
// session as soon as it has sent the final message, which the handshake
// goroutine handles, so the datagram can overtake it. ours reports
// whether idx is such a reply's (then no reset is due); kept whether p
// was kept (at most maxHeld are).
func (c *Conn) holdForResponse(idx uint32, p *packet) (kept, ours bool) {
	pr := c.index.responder(idx)
	if pr == nil {
		return false, false
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	r := pr.responseLocked(idx)
	if r == nil {
		return false, false
	}
	return c.holdLocked(r, p), true
}

// holdLocked keeps q with r until its session is made, within maxHeld
// (beyond, it is counted as of an unknown session and not kept); the mu
// of r's peer is held.
func (c *Conn) holdLocked(r *response, q *packet) bool {
	if len(r.held) >= maxHeld {
		c.stats.unknownSession.Add(1)
		return false
	}
	r.held = append(r.held, q)
	return true
}

// holdCoalescedLocked keeps sealed, the datagram coalesced in r's final
// message (none: nothing), with r's held datagrams, within maxHeld; the
// mu of r's peer is held.
func (c *Conn) holdCoalescedLocked(r *response, sealed []byte, from netip.AddrPort, local netip.Addr) {
	if len(sealed) == 0 {
		return
	}
	for _, q := range r.held {
		if bytes.Equal(q.data, sealed) {
			return // the initiator sent the final message again: held already
		}
	}
	if q := c.packetOf(sealed, from, local); q != nil && !c.holdLocked(r, q) {
		c.putPacket(q)
	}
}

// responseLocked returns p's reply waiting for its final message whose
// local index is idx (the newest or the one before), or nil; p.mu is
// held.
func (p *peer) responseLocked(idx uint32) *response {
	for _, r := range []*response{p.respNew, p.respOld} {
		if r != nil && r.localIndex == idx {
			return r
		}
	}
	return nil
}

// dropHeldResponse gives back the datagrams r held; the peer's lock is
// held.
func (c *Conn) dropHeldResponse(r *response) {
	c.stats.unknownSession.Add(uint64(len(r.held)))
	for _, q := range r.held {
		c.putPacket(q)
	}
	r.held = nil
}

// finalAgain handles a final message for s, a session it completed
// already: our confirmation was lost. A keepalive goes to the peer's
// validated address (never to the final's source), at most once per
// retry interval, and the coalesced datagram is received as any other
// (the replay window drops it if it came before).
func (c *Conn) finalAgain(s *session, sealed []byte, from netip.AddrPort, local netip.Addr) {
	now := c.now()
	if last := s.finalAcked.Load(); last == 0 || now-last >= int64(c.retryAfter()) {
		s.finalAcked.Store(now | 1)
		c.sendConfirm(s, *s.peer.at.Load())
	}
	if len(sealed) > 0 {
		c.receiveCoalesced(sealed, from, local)
	}
}

// sendConfirm confirms s to its initiator: an empty sealed datagram (not
// counted as a keepalive: it is the handshake's last step).
func (c *Conn) sendConfirm(s *session, to netip.AddrPort) {
	if err := c.sendSealed(s, to, nil, false, nil); err != nil {
		c.log.Debug("vaultudp: confirming a session", "peer", to, "err", err)
	}
}

// packetOf returns a packet holding a copy of b, a sealed datagram that
// came from from at local inside another (a final message), or nil if it
// is longer than a packet holds (counted, Drops.TooLarge).
func (c *Conn) packetOf(b []byte, from netip.AddrPort, local netip.Addr) *packet {
	q := c.getPacket()
	if len(b) > len(q.buf) {
		c.putPacket(q)
		c.stats.tooLarge.Add(1)
		return nil
	}
	q.data = q.buf[:copy(q.buf, b)]
	q.from, q.local, q.truncated = from, local, false
	return q
}

// receiveCoalesced receives the sealed datagram that came after a final
// message, from from at local, as if it had come alone.
func (c *Conn) receiveCoalesced(sealed []byte, from netip.AddrPort, local netip.Addr) {
	q := c.packetOf(sealed, from, local)
	if q == nil {
		return
	}
	if !c.receive(q) {
		c.putPacket(q)
	}
	// This may run on a handshake worker while a reader is blocked
	// in the socket (reader.go), where the datagram will not come: it
	// must look at the queue now, as for a datagram to oneself.
	c.kickDirectReader()
}

// installResponder makes s, the session of a response its initiator
// completed, p's current session, confirmed. It returns the datagrams
// that waited for it and the peer's address to send them to; ok is false
// if p is gone, or s's identity is new at a learned peer's address whose
// old identity answered its liveness challenge meanwhile (PROTOCOL.md
// 5.16).
func (c *Conn) installResponder(p *peer, s *session, r *response, identity ed25519.PublicKey, wall time.Time) (queued [][]byte, held []*packet, to netip.AddrPort, ok bool) {
	s.peer = p
	s.identity = identity
	addr := p.addrLoad()
	p.mu.Lock()
	path := r.path
	p.mu.Unlock()
	if path == 0 || addr != r.from {
		path = c.pathDatagram(addr) // sizes.go: a system call, before the lock
	}
	s.path = path
	now := c.now()
	p.mu.Lock()
	if !p.takeResponseLocked(r) || p.removed {
		c.dropHeldResponse(r)
		p.mu.Unlock()
		c.index.dropResponse(r.localIndex)
		return nil, nil, netip.AddrPort{}, false
	}
	replace := false
	if p.identity != nil && !bytes.Equal(p.identity, s.identity) {
		// A new identity at a learned peer's address (path.go,
		// replaceable): it replaces the old one only if the old one did
		// not answer its liveness challenge meanwhile.
		if p.alive != 0 && p.alive >= p.replacing {
			c.dropHeldResponse(r)
			p.mu.Unlock()
			c.index.dropResponse(r.localIndex)
			c.stats.rejected.Add(1)
			return nil, nil, netip.AddrPort{}, false
		}
		replace = true
		p.live, p.alive, p.replacing = nil, 0, 0
	}
	rekey := p.kp.current() != nil
	// Added before the index stops naming the reply: a datagram under s
	// always finds one or the other.
	c.index.add(s)
	c.index.doneResponding(r.localIndex)
	held, r.held = r.held, nil
	// The peer's completed session serves (crossed hellos, PROTOCOL.md 9.9).
	queued = c.makeCurrentLocked(p, s, s.identity, wall, now, rekey, replace)
	to = p.addr
	p.mu.Unlock()
	c.log.Debug("vaultudp: session established", "peer", to, "initiator", false, "rekey", rekey, "replaced", replace)
	if !rekey || replace {
		c.event(Event{Kind: EventUp, Addr: to, Key: identity})
	}
	return queued, held, to, true
}
