package vaultudp

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// readLoop reads s until it is closed (by Close or Rebind), handling
// every datagram: handshakes are answered here, so a Conn that only
// writes still completes them.
func (c *Conn) readLoop(s *socket) {
	defer c.wg.Done()
	r := s.newReader()
	pkts := make([]*packet, readBatchSize)
	for i := range pkts {
		pkts[i] = c.getPacket()
	}
	defer func() {
		for _, p := range pkts {
			c.putPacket(p)
		}
	}()
	direct := s.Caps().Deadlines // application readers take turns (direct.go)
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		if direct && !c.bgBegin(s, idle) {
			return
		}
		n, err := r.read(pkts)
		if direct && err != nil && c.bgEnd(s) {
			continue // an application reader interrupted us
		}
		if err != nil {
			if c.isClosed() || c.sock.Load() != s {
				return
			}
			if errors.Is(err, ErrClosed) {
				return
			}
			c.log.Debug("vaultudp: read", "err", err)
			continue
		}
		for i := 0; i < n; i++ {
			if c.receive(pkts[i]) {
				pkts[i] = c.getPacket()
			}
		}
		if direct {
			// Out of the socket only now that what it read is queued: an
			// application reader looks at the queue before the socket.
			c.bgEnd(s)
		}
	}
}

// receive handles one datagram. It returns true if it kept p (queued it
// for ReadFrom).
func (c *Conn) receive(p *packet) bool {
	// Protocol v2 (v2conn.go): a datagram from the IP of a ProtocolV2
	// peer is tried as v2 first (v2 has no version byte: route by IP).
	if c.v2.active() {
		if kept, done := c.receiveV2(p); done {
			return kept
		}
	}
	b := p.data
	if p.truncated {
		c.stats.tooLarge.Add(1)
		return false
	}
	if len(b) < openHeaderLen || b[0] != ProtocolVersion {
		c.stats.malformed.Add(1)
		return false
	}
	switch b[1] {
	case typeSealed:
		return c.receiveSealed(p)
	case typeOpen:
		return c.receiveOpen(p)
	}
	c.stats.malformed.Add(1)
	return false
}

func (c *Conn) receiveSealed(p *packet) bool {
	idx, ok := sealedIndex(p.data)
	if !ok {
		c.stats.malformed.Add(1)
		return false
	}
	c.idxMu.Lock()
	s := c.sessions[idx]
	c.idxMu.Unlock()
	if s == nil {
		c.stats.unknownSession.Add(1)
		return false
	}
	now := c.now()
	if time.Duration(now-s.created) >= c.receiveLimit() {
		c.stats.unknownSession.Add(1)
		return false
	}
	env, err := s.open(p.data)
	switch {
	case errors.Is(err, errReplay):
		c.stats.replay.Add(1)
		return false
	case err != nil:
		c.stats.auth.Add(1)
		return false
	}
	rec, err := parseRecord(env)
	if err != nil {
		// Authentic but malformed: a peer's bug, not an attack.
		c.stats.malformed.Add(1)
		return false
	}
	pr := s.peer
	pr.seenSealed.Store(true)
	pr.mu.Lock()
	var queued [][]byte
	if !s.confirmed.Load() {
		queued = c.confirmLocked(pr, s)
	}
	pr.lastSeen = now
	roamed := pr.addr != p.from
	pr.mu.Unlock()
	if roamed {
		c.roam(pr, p.from)
	}
	c.flush(pr, s, p.from, queued)
	if !rec.hasPayload {
		return false // a keepalive: it confirmed the session, nothing to deliver
	}
	return c.deliver(p, pr, &rec)
}

// confirmLocked makes s, a responder session now proven by a datagram
// from the peer, its current session, and returns the datagrams that
// waited for it.
func (c *Conn) confirmLocked(p *peer, s *session) [][]byte {
	s.confirmed.Store(true)
	if p.next != s && p.nextOld != s {
		return nil
	}
	// The other unconfirmed session, if any, answered a hello the
	// initiator has given up.
	other := p.next
	if other == s {
		other = p.nextOld
	}
	c.unindexLocked(p, p.previous, other)
	p.previous, p.current, p.next, p.nextOld = p.current, s, nil, nil
	p.established = true
	p.notifyLocked()
	return c.takeQueueLocked(p, s)
}

// takeQueueLocked hands the datagrams waiting for a session to the caller
// once s is p's current session. Writers wait until flush has sent them,
// so that a datagram written after one that waited does not overtake it.
func (c *Conn) takeQueueLocked(p *peer, s *session) [][]byte {
	if p.current != s || len(p.queue) == 0 || p.flushed != nil {
		return nil
	}
	queued := p.queue
	p.queue = nil
	p.flushed = make(chan struct{})
	return queued
}

// roam moves p to the address an authenticated datagram came from, as
// WireGuard does. Unauthenticated datagrams never move a peer.
func (c *Conn) roam(p *peer, to netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if other := c.peers[to]; other != nil && other != p {
		if other.configured {
			return // never displace a configured peer
		}
		c.dropPeerLocked(other, fmt.Errorf("%w: %v was taken over by a roaming peer", ErrUnknownPeer, to))
	}
	p.mu.Lock()
	from := p.addr
	if c.peers[from] == p {
		delete(c.peers, from)
	}
	p.addr = to
	p.mu.Unlock()
	c.peers[to] = p
	c.log.Debug("vaultudp: peer roamed", "from", from, "to", to)
}

// deliver queues the payload of rec (from p.data) for ReadFrom,
// decompressing it into a new packet if it is compressed.
func (c *Conn) deliver(p *packet, pr *peer, rec *record) bool {
	if pr != nil && pr.limiter != nil && !pr.limiter.Allow() {
		c.stats.rateLimit.Add(1)
		return false
	}
	q, kept := p, true
	if rec.compressed {
		q = c.getPacket()
		out, err := c.z.decompress(q.buf, rec.payload)
		if err != nil {
			c.putPacket(q)
			if errors.Is(err, errTooLarge) {
				c.stats.tooLarge.Add(1)
			} else {
				c.stats.malformed.Add(1)
			}
			return false
		}
		q.data, q.from, kept = out, p.from, false
	} else {
		q.data = rec.payload
	}
	// Count before queueing: once queued, q belongs to the reader, and
	// ReadFrom may return it before this goroutine runs again; Stats must
	// not lag behind what the application has read. A full queue takes
	// the count back.
	n := uint64(len(q.data))
	c.stats.datagramsIn.Add(1)
	c.stats.bytesIn.Add(n)
	select {
	case c.recvQ <- q:
		return kept
	default:
		c.stats.datagramsIn.Add(^uint64(0))
		c.stats.bytesIn.Add(-n)
		c.stats.queueFull.Add(1)
		if !kept {
			c.putPacket(q)
		}
		return false
	}
}

// policyFor returns the policy for datagrams from addr.
func (c *Conn) policyFor(p *peer) Policy {
	if p == nil {
		return c.cfg.Policy
	}
	return p.policy
}

func (c *Conn) receiveOpen(p *packet) bool {
	rec, err := parseRecord(p.data[openHeaderLen:])
	if err != nil {
		c.stats.malformed.Add(1)
		return false
	}
	if rec.control != nil {
		c.handleControl(rec.control, p.from)
	}
	if !rec.hasPayload {
		return false
	}
	pr, _ := c.peerFor(p.from, false)
	switch c.policyFor(pr) {
	case RequireEncryption:
		c.stats.policy.Add(1)
		return false
	case Opportunistic:
		if pr != nil && pr.seenSealed.Load() {
			c.stats.policy.Add(1) // a downgrade: this peer has spoken sealed
			return false
		}
	}
	if pr == nil {
		// Plaintext from a new address under a permissive policy: it
		// becomes a learned peer, so that rate limits apply to it.
		if pr, err = c.peerFor(p.from, true); err != nil {
			return false
		}
	}
	pr.mu.Lock()
	pr.lastSeen = c.now()
	pr.mu.Unlock()
	return c.deliver(p, pr, &rec)
}

func (c *Conn) handleControl(msg []byte, from netip.AddrPort) {
	if len(msg) == 0 {
		c.stats.malformed.Add(1)
		return
	}
	switch msg[0] {
	case ctlHello:
		c.handleHello(msg, from)
	case ctlReply:
		c.handleReply(msg)
	case ctlCookie:
		c.handleCookie(msg, from)
	default:
		c.stats.malformed.Add(1)
	}
}

// trust applies the trust rules to key presented by p (nil if the address
// is not a peer yet) at addr.
func (c *Conn) trust(p *peer, addr netip.AddrPort, key ed25519.PublicKey) error {
	var pinned, known ed25519.PublicKey
	if p != nil {
		p.mu.Lock()
		pinned, known = p.pinned, p.identity
		p.mu.Unlock()
	}
	switch {
	case pinned != nil:
		if !bytes.Equal(pinned, key) {
			return fmt.Errorf("%w: %v presented %s, pinned key is %s", ErrPeerRejected, addr, EncodePublicKey(key), EncodePublicKey(pinned))
		}
	case c.cfg.VerifyPeer != nil:
		if err := c.cfg.VerifyPeer(addr, slicesClone(key)); err != nil {
			return fmt.Errorf("%w: %v: %w", ErrPeerRejected, addr, err)
		}
	case known != nil && !bytes.Equal(known, key):
		return fmt.Errorf("%w: %v presented %s, but it used %s before (trust on first use)", ErrPeerRejected, addr, EncodePublicKey(key), EncodePublicKey(known))
	}
	return nil
}

func slicesClone(k ed25519.PublicKey) ed25519.PublicKey { return append(ed25519.PublicKey(nil), k...) }

func (c *Conn) handleHello(msg []byte, from netip.AddrPort) {
	m, err := parseHello(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return
	}
	wall := c.cfg.now()
	if c.cookies.underLoad(wall) && !c.cookies.valid(from, m.cookie, wall) {
		cookie := c.cookies.make(from, wall)
		c.stats.cookiesSent.Add(1)
		c.sendControl(from, cookieMsg(m.senderIndex, cookie[:]))
		return
	}
	if err := checkFresh(m.timestamp, wall, c.cfg.FreshnessWindow); err != nil {
		c.stats.stale.Add(1)
		return
	}
	var idKey [ed25519.PublicKeySize]byte
	copy(idKey[:], m.identity)
	c.mu.RLock()
	pr := c.peers[from]
	last := c.lastHello[idKey]
	full := pr == nil && c.learned >= c.cfg.MaxPeers
	c.mu.RUnlock()
	if full {
		// Refused before any costly work: a flood of signed hellos from
		// new addresses cannot buy signature checks once the table is
		// full.
		c.stats.peerLimit.Add(1)
		return
	}
	if m.timestamp <= last {
		c.stats.stale.Add(1) // a replayed or reordered hello
		return
	}
	if c.policyFor(pr) == Plaintext {
		c.stats.policy.Add(1)
		return
	}
	c.stats.verifications.Add(1)
	if err := m.verify(); err != nil {
		c.stats.auth.Add(1)
		return
	}
	if err := c.trust(pr, from, m.identity); err != nil {
		c.stats.rejected.Add(1)
		c.log.Info("vaultudp: handshake refused", "peer", from, "err", err)
		return
	}
	if pr != nil {
		pr.mu.Lock()
		weInitiate := pr.init != nil && bytes.Compare(c.hs.public, m.identity) > 0
		pr.mu.Unlock()
		if weInitiate {
			// Both sides sent hellos at once: the larger identity
			// initiates, the smaller answers, and one session results.
			return
		}
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return
	}
	c.idxMu.Lock()
	idx := c.newIndexLocked()
	c.sessions[idx] = nil // reserve it
	c.idxMu.Unlock()
	reply, keys, err := c.hs.respond(m, wall, idx, eph)
	if err != nil {
		c.releaseIndex(idx)
		switch {
		case errors.Is(err, errReflected):
			c.stats.auth.Add(1)
		default:
			c.stats.malformed.Add(1)
		}
		return
	}
	s, err := newSession(keys, c.now())
	if err != nil {
		c.releaseIndex(idx)
		return
	}
	c.mu.Lock()
	if m.timestamp <= c.lastHello[idKey] {
		c.mu.Unlock()
		c.releaseIndex(idx)
		c.stats.stale.Add(1)
		return
	}
	if pr = c.peers[from]; pr == nil {
		if c.learned >= c.cfg.MaxPeers {
			c.mu.Unlock()
			c.releaseIndex(idx)
			c.stats.peerLimit.Add(1)
			return
		}
		pr = c.newPeer(from, nil)
		c.peers[from] = pr
		c.learned++
	}
	c.lastHello[idKey] = m.timestamp // only for a hello that is answered
	c.mu.Unlock()

	queued := c.install(pr, s, keys.peerIdentity, wall)
	c.sendControl(from, reply)
	c.flush(pr, s, from, queued)
}

func (c *Conn) releaseIndex(idx uint32) {
	c.idxMu.Lock()
	delete(c.sessions, idx)
	c.idxMu.Unlock()
}

// install makes s a session of p and returns the datagrams that waited
// for it, to be sent once the caller has sent what must go first.
func (c *Conn) install(p *peer, s *session, identity ed25519.PublicKey, wall time.Time) [][]byte {
	s.peer = p
	now := c.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		c.releaseIndex(s.localIndex)
		return nil
	}
	rekey := p.current != nil
	c.idxMu.Lock()
	c.sessions[s.localIndex] = s
	c.idxMu.Unlock()
	// Our own attempt, if any, is over: completed (initiator), or
	// superseded by the peer's (responder; see the tie-break in
	// handleHello).
	c.clearInitLocked(p)
	if s.initiator {
		c.unindexLocked(p, p.previous, p.next, p.nextOld)
		p.previous, p.current, p.next, p.nextOld = p.current, s, nil, nil
		p.established = true
	} else {
		// A responder session waits for the peer's first sealed
		// datagram (confirmLocked) before it is used to send.
		// Keep the one before: the initiator may have retried before our
		// first reply reached it, and then confirms that one.
		c.unindexLocked(p, p.nextOld)
		p.nextOld, p.next = p.next, s
	}
	p.identity = identity
	p.lastHandshake = wall
	p.failErr = nil
	p.lastSeen = now
	c.stats.handshakes.Add(1)
	if rekey {
		c.stats.rekeys.Add(1)
	}
	queued := c.takeQueueLocked(p, s)
	p.notifyLocked()
	c.log.Debug("vaultudp: session established", "peer", p.addr, "initiator", s.initiator, "rekey", rekey)
	return queued
}

// flush sends datagrams that waited for s, then lets the writers that
// wait for it (see install) go on.
func (c *Conn) flush(p *peer, s *session, to netip.AddrPort, queued [][]byte) {
	if len(queued) == 0 {
		return
	}
	for _, b := range queued {
		if err := c.sendData(s, to, b); err != nil {
			c.log.Debug("vaultudp: sending queued datagram", "peer", to, "err", err)
		}
	}
	p.mu.Lock()
	close(p.flushed)
	p.flushed = nil
	p.mu.Unlock()
}

func (c *Conn) handleReply(msg []byte) {
	r, err := parseReply(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return
	}
	c.idxMu.Lock()
	p := c.initiated[r.receiverIndex]
	c.idxMu.Unlock()
	if p == nil {
		c.stats.stale.Add(1) // an answer to no hello of ours, or to one completed
		return
	}
	p.mu.Lock()
	init, addr := p.init, p.addr
	if p.prevInit != nil && p.prevInit.localIndex == r.receiverIndex {
		init = p.prevInit // a reply slower than our retry
	}
	p.mu.Unlock()
	if init == nil || init.localIndex != r.receiverIndex {
		c.stats.stale.Add(1)
		return
	}
	wall := c.cfg.now()
	keys, err := c.hs.complete(init, r, wall, c.cfg.FreshnessWindow)
	if err != nil {
		switch {
		case errors.Is(err, errStale):
			c.stats.stale.Add(1)
		case errors.Is(err, errUnexpected):
			c.stats.stale.Add(1)
		default:
			c.stats.auth.Add(1)
		}
		return
	}
	// Trust is decided on a key whose signature has been verified.
	if err := c.trust(p, addr, r.identity); err != nil {
		c.stats.rejected.Add(1)
		c.log.Info("vaultudp: handshake refused", "peer", addr, "err", err)
		return
	}
	s, err := newSession(keys, c.now())
	if err != nil {
		return
	}
	p.mu.Lock()
	still := p.init == init || p.prevInit == init
	p.mu.Unlock()
	if !still {
		c.stats.stale.Add(1)
		return
	}
	queued := c.install(p, s, keys.peerIdentity, wall)
	if len(queued) == 0 {
		// Confirm the session to the responder at once, so that it may
		// use it for sending.
		if err := c.sendSealed(s, addr, nil, false); err != nil {
			c.log.Debug("vaultudp: keepalive", "peer", addr, "err", err)
		}
	}
	c.flush(p, s, addr, queued)
}

func (c *Conn) handleCookie(msg []byte, from netip.AddrPort) {
	idx, cookie, err := parseCookieMsg(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return
	}
	c.idxMu.Lock()
	p := c.initiated[idx]
	c.idxMu.Unlock()
	if p == nil {
		c.stats.stale.Add(1)
		return
	}
	p.mu.Lock()
	var hello []byte
	// Only the address we sent the hello to may ask for a cookie, and
	// only once per hello (the cookie is then in it).
	if p.init != nil && p.init.localIndex == idx && from == p.addr && !bytes.Equal(p.init.cookie(), cookie) {
		p.init.setCookie(cookie)
		hello = p.init.hello
		p.initSent = c.now()
	}
	to := p.addr
	p.mu.Unlock()
	if hello != nil {
		c.sendControl(to, hello)
	}
}
