package vaultudp

import (
	"crypto/rand"
	"crypto/subtle"
	"net/netip"
	"sync/atomic"
	"time"
)

// Paths. Through a net.PacketConn the source address is the only identity
// an application sees, so a peer is bound to one validated address, and a
// datagram is delivered as from that address only. An authenticated
// datagram from another address does not move the peer: it starts a path
// challenge (QUIC, RFC 9000 §8.2 and §9), sealed under the peer's session
// and sent to the new address; the peer moves when the answer, sealed
// under its session, comes back from there. Datagrams that arrived on the
// new path meanwhile are held (at most maxHeldOnPath) and delivered as
// from the new address once it is proved; they are dropped if it is not
// within a handshake timeout. A peer never moves onto an address held by
// another peer.
//
// Nothing is sent to an address that has not proved it receives beyond
// what it sent: a challenge goes out only when the datagrams from the new
// address add up to at least its length (anti-amplification, 1×).
//
// A liveness challenge is the same message sent to a learned peer's own
// address: when a hello with another identity comes from that address and
// the old identity does not answer, the new one may replace it.
//
// The control messages, carried in the "c" field of sealed envelopes
// (never open ones), padded as data is, but for a path challenge to an
// unproved address:
//
//	challenge: 0 type = 4, 1 data, 8 random bytes
//	response:  0 type = 5, 1 data, the challenge's 8 bytes

const (
	ctlChallenge = 4
	ctlResponse  = 5

	challengeLen = 1 + 8

	// maxHeldOnPath is how many datagrams from an address being validated
	// wait for its answer.
	maxHeldOnPath = 8
	// maxHeldBytesPerConn bounds the buffers held for all the paths being
	// validated, as maxQueuedBytesPerConn bounds the send queues: a held
	// datagram can be 64 KiB (GRO), and sessions are as cheap as a key.
	maxHeldBytesPerConn = 4 << 20
)

// pathCheck is a challenge under way; the peer's mu guards it.
type pathCheck struct {
	addr    netip.AddrPort // where the challenge went
	data    [8]byte
	started int64     // Conn clock at the first challenge
	sentAt  int64     // ... at the last one; zero if none sent yet
	credit  int       // bytes received from addr not yet spent on challenges
	held    []*packet // path only: datagrams that arrived from addr

	heldBytes int           // the buffers of held, counted in acct
	acct      *atomic.Int64 // the Conn's count of held buffers (Conn.heldBytes)
}

// hold keeps q, within the Conn-wide bound; false if it is reached.
func (pc *pathCheck) hold(q *packet) bool {
	n := cap(q.buf)
	if pc.acct.Add(int64(n)) > maxHeldBytesPerConn {
		pc.acct.Add(-int64(n))
		return false
	}
	pc.held = append(pc.held, q)
	pc.heldBytes += n
	return true
}

// takeHeld returns the held datagrams, no longer counted.
func (pc *pathCheck) takeHeld() []*packet {
	held := pc.held
	pc.acct.Add(-int64(pc.heldBytes))
	pc.held, pc.heldBytes = nil, 0
	return held
}

// dropPathLocked ends the path check of p, a peer being closed, and lets
// its held datagrams go (to the garbage collector: the peer has no
// Conn at hand). p.mu is held.
func (p *peer) dropPathLocked() {
	if pc := p.path; pc != nil {
		pc.takeHeld()
		p.path = nil
	}
}

// challengeWireLen is the length of a sealed, unpadded challenge.
var challengeWireLen = sealedOverhead + (&record{control: make([]byte, challengeLen)}).envelopeLen()

// onNewPath handles an authenticated datagram from from, an address other
// than the peer's: it starts or continues the path challenge, and holds
// the payload, if any, until the address is proved. It returns true if it
// kept p.
func (c *Conn) onNewPath(pr *peer, s *session, p *packet, rec *record) bool {
	from := p.from
	other := c.peers.lookup(from)
	if other != nil && other != pr {
		// Never onto an address that another peer holds: a configured
		// one, or another identity. Nothing is delivered as from it.
		c.stats.unvalidated.Add(1)
		return false
	}
	now := c.now()
	pr.mu.Lock()
	pc := pr.path
	if pc == nil || pc.addr != from {
		c.dropHeldLocked(pc)
		pc = &pathCheck{addr: from, started: now, acct: &c.heldBytes}
		rand.Read(pc.data[:])
		pr.path = pc
	}
	pc.credit += len(p.data)
	send := c.challengeDueLocked(pc, now)
	kept := false
	if rec.hasPayload && !pr.removed {
		if len(pc.held) >= maxHeldOnPath {
			c.stats.unvalidated.Add(1)
		} else if q, k, ok := c.payloadPacket(p, pr, rec); ok {
			q.from = from
			if pc.hold(q) {
				kept = k
			} else {
				c.stats.unvalidated.Add(1) // the Conn holds all it may
				if !k {
					c.putPacket(q)
				}
			}
		}
	}
	data := pc.data
	pr.mu.Unlock()
	if send {
		c.sendChallenge(s, from, ctlChallenge, data, false) // unproved: as small as it gets
	}
	return kept
}

// challengeDueLocked reports whether a challenge may go to pc.addr now:
// none was sent in the last retry interval, and what the address sent
// covers its length. It spends the credit. The mu of the peer pc belongs
// to is held.
func (c *Conn) challengeDueLocked(pc *pathCheck, now int64) bool {
	if pc.sentAt != 0 && time.Duration(now-pc.sentAt) < c.retryAfter() {
		return false
	}
	if pc.credit < challengeWireLen {
		return false
	}
	pc.credit -= challengeWireLen
	pc.sentAt = now | 1 // never zero
	return true
}

// sendChallenge sends a challenge or response sealed under s to to.
// Padded as the Config says if pad is set: to a validated address;
// a path challenge to an unproved one is not (anti-amplification).
func (c *Conn) sendChallenge(s *session, to netip.AddrPort, typ byte, data [8]byte, pad bool) {
	msg := make([]byte, challengeLen)
	msg[0] = typ
	copy(msg[1:], data[:])
	if err := c.sendSealedRecord(s, to, &record{control: msg}, pad); err != nil {
		c.log.Debug("vaultudp: sending path message", "peer", to, "err", err)
	}
}

// handleSealedControl handles a control message in a sealed datagram from
// pr's session s, received from from.
func (c *Conn) handleSealedControl(pr *peer, s *session, msg []byte, from netip.AddrPort) {
	if len(msg) >= tokenMsgLen && msg[0] == ctlToken {
		// The peer's token for a new path (reset.go), and its
		// parameters again.
		var t [tokenLen]byte
		copy(t[:], msg[1:])
		s.peerToken.Store(&t)
		readParams(s, msg[tokenMsgLen:]) // sizes.go
		return
	}
	if len(msg) != challengeLen {
		c.stats.malformed.Add(1)
		return
	}
	var data [8]byte
	copy(data[:], msg[1:])
	switch msg[0] {
	case ctlChallenge:
		// Answer to the peer's validated address only: whoever sent it
		// from elsewhere gets nothing (a forwarded copy cannot reflect).
		pr.mu.Lock()
		to := pr.addr
		pr.mu.Unlock()
		c.sendChallenge(s, to, ctlResponse, data, true)
	case ctlResponse:
		c.handleResponse(pr, data, from)
	default:
		c.stats.malformed.Add(1)
	}
}

// handleResponse completes a path or liveness challenge of pr answered
// from from.
func (c *Conn) handleResponse(pr *peer, data [8]byte, from netip.AddrPort) {
	pr.mu.Lock()
	if lc := pr.live; lc != nil && lc.addr == from && subtle.ConstantTimeCompare(lc.data[:], data[:]) == 1 {
		pr.live = nil
		pr.alive = c.now() | 1
		pr.mu.Unlock()
		return
	}
	pc := pr.path
	if pc == nil || pc.addr != from || subtle.ConstantTimeCompare(pc.data[:], data[:]) != 1 {
		pr.mu.Unlock()
		c.stats.stale.Add(1)
		return
	}
	pr.path = nil
	held := pc.takeHeld()
	pr.mu.Unlock()
	if !c.movePeer(pr, from) {
		c.dropHeld(held)
		return
	}
	// The token we gave the peer is bound to its old address (reset.go).
	if cur := pr.kp.current(); cur != nil {
		c.sendToken(cur, from)
	}
	for _, q := range held {
		if !c.queueRead(q, pr) {
			c.putPacket(q)
		}
	}
}

// movePeer moves pr to the address it proved, under c.peers.mu, so that moving,
// removing and forgetting peers are atomic with respect to each other. It
// refuses (false) if pr is gone or another peer holds the address.
func (c *Conn) movePeer(pr *peer, to netip.AddrPort) bool {
	from, ok := c.movePeerTable(pr, to)
	if ok { // reported with no lock held: the handler is the application's code
		c.event(Event{Kind: EventRoamed, Addr: to, From: from})
	}
	return ok
}

// movePeerTable is movePeer's part under c.peers.mu and pr.mu.
func (c *Conn) movePeerTable(pr *peer, to netip.AddrPort) (from netip.AddrPort, ok bool) {
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	if other := c.peers.getLocked(to); other != nil && other != pr {
		c.stats.unvalidated.Add(1)
		return from, false
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.removed || c.peers.getLocked(pr.addr) != pr {
		return from, false
	}
	from = pr.addr
	c.peers.moveLocked(pr, to)
	pr.lastSeen.Store(c.now())
	return from, true
}

// onPathTimeout: a path or liveness challenge unanswered for a handshake
// timeout is abandoned (timers.go); held datagrams are dropped.
func (c *Conn) onPathTimeout(p *peer, now int64) {
	if pc := p.path; pc != nil && time.Duration(now-pc.started) >= c.cfg.HandshakeTimeout {
		p.path = nil
		c.dropHeldLocked(pc)
	}
	if lc := p.live; lc != nil && time.Duration(now-lc.started) >= c.cfg.HandshakeTimeout {
		p.live = nil
	}
}

// dropHeldLocked drops the datagrams pc holds; the mu of the peer pc
// belongs to is held.
func (c *Conn) dropHeldLocked(pc *pathCheck) {
	if pc != nil {
		c.dropHeld(pc.takeHeld())
	}
}

func (c *Conn) dropHeld(held []*packet) {
	for _, q := range held {
		c.stats.unvalidated.Add(1)
		c.putPacket(q)
	}
}

// liveWait is how long a learned peer has to answer a liveness challenge
// before a new identity at its address may replace it: half the hello
// retry interval, so that the new identity's next hello finds the answer
// overdue and a restarted client is back within about a retry.
func (c *Conn) liveWait() time.Duration { return c.retryAfter() / 2 }

// onLivenessUnanswered: a new identity's final message waits at a learned
// peer's address (commitFinal kept what it revealed) while the old
// identity's liveness challenge goes unanswered; once liveWait has
// passed, the final message is judged again now (replaceable then lets
// it in), not when its initiator sends it again: that comes at the
// initiator's own retry interval, up to a second, which may be after this
// Conn's handshake timeout has dropped the response, and the restarted
// client would then wait out its whole attempt. It returns the final
// messages to judge again, each once, with where they came from.
func (c *Conn) onLivenessUnanswered(p *peer, now int64) (again []*response) {
	lc := p.live
	if lc == nil || lc.sentAt == 0 || time.Duration(now-lc.sentAt) < c.liveWait() {
		return nil
	}
	// The newest such final message only: an initiator that has sent a
	// newer one has given up the attempt of the older (judging both
	// could leave the older session current, by a hair).
	for _, r := range []*response{p.respNew, p.respOld} {
		if r != nil && r.result != nil {
			if !r.judgedAgain {
				r.judgedAgain = true
				again = append(again, r)
			}
			break
		}
	}
	return again
}

// replaceable decides whether a hello from pr's address with another
// identity may replace pr, a learned peer whose remembered key (trust on
// first use) is the only objection. It reports true once a liveness
// challenge sealed under pr's session went unanswered for liveWait;
// otherwise it sends the challenge (if none is under way) and reports
// false. A peer with no session to answer under is not replaced: it never
// proved itself, or has been idle, and is forgotten soon (timers.go).
func (c *Conn) replaceable(pr *peer) bool {
	now := c.now()
	pr.mu.Lock()
	s := pr.kp.current()
	if !c.usable(s, now) {
		pr.mu.Unlock()
		return false
	}
	lc := pr.live
	if lc != nil && lc.sentAt != 0 && time.Duration(now-lc.sentAt) >= c.liveWait() {
		if pr.replacing == 0 {
			pr.replacing = now | 1 // an answer after this still keeps the old identity
		}
		pr.mu.Unlock()
		return true
	}
	if pr.alive != 0 && time.Duration(now-pr.alive) < c.liveWait() {
		pr.mu.Unlock()
		return false // it answered a moment ago
	}
	send := false
	if lc == nil {
		lc = &pathCheck{addr: pr.addr, started: now, sentAt: now | 1}
		rand.Read(lc.data[:])
		pr.live = lc
		send = true
	}
	to, data := pr.addr, lc.data
	pr.mu.Unlock()
	if send {
		// To the peer's validated address, which proved it receives;
		// unpadded, so that it is smaller than the hello that caused it
		// (a hello forged as from the peer must not reflect more).
		c.sendChallenge(s, to, ctlChallenge, data, false)
	}
	return false
}

// setLocal records a, the local address an authenticated datagram from p
// arrived at, for answers to leave from (nothing where the socket does not
// tell). It allocates only when the address changes.
func (p *peer) setLocal(a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if cur := p.local.Load(); cur == nil || *cur != a {
		na := new(netip.Addr)
		*na = a
		p.local.Store(na)
	}
}

// localAddr returns the local address datagrams to p leave from: where
// its last authenticated datagram arrived, or the zero Addr (the system's
// choice).
func (p *peer) localAddr() netip.Addr {
	if a := p.local.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// source returns the local address datagrams sealed under s leave from
// (its peer's localAddr).
func (s *session) source() netip.Addr {
	if s.peer == nil {
		return netip.Addr{}
	}
	return s.peer.localAddr()
}
