package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"time"
)

// The sessions by local index: sessions (under idxMu) for the handshake
// driver's bookkeeping, and live, a copy the receive path reads without a
// lock (sync.Map: read-mostly, keys written once).

// indexSession makes s findable by its local index.
func (c *Conn) indexSession(s *session) {
	c.idxMu.Lock()
	c.sessions[s.localIndex] = s
	c.live.Store(s.localIndex, s)
	c.idxMu.Unlock()
}

// liveSession returns the session with local index idx, or nil.
func (c *Conn) liveSession(idx uint32) *session {
	s, _ := c.live.Load(idx)
	ss, _ := s.(*session)
	return ss
}

// install makes s a session of p and returns the datagrams that waited
// for it, to be sent once the caller has sent what must go first. path is
// the path's size if already looked up (an initiator's, when its hello was
// sent), or nil.
func (c *Conn) install(p *peer, s *session, identity ed25519.PublicKey, wall time.Time, path *pathAt) [][]byte {
	s.peer = p
	s.identity = identity
	if addr := p.addrLoad(); path != nil && path.addr == addr {
		s.path = path.datagram
	} else {
		s.path = c.pathDatagram(addr) // sizes.go: a system call, before the lock
	}
	now := c.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		c.releaseIndex(s.localIndex)
		return nil
	}
	rekey := p.current != nil
	c.indexSession(s)
	// Our own attempt, if any, is over: completed (initiator), or
	// superseded by the peer's (responder) unless ours is the one that
	// should win. Crossed hellos are settled by the larger identity
	// initiating (see the tie-break in handleHello), but a hello made
	// while the peer's was being answered can still cross it; then the
	// larger side's attempt goes on, and whichever sessions result, the
	// peer's traffic still opens (below).
	if s.initiator || bytes.Compare(c.hs.public, identity) < 0 {
		c.clearInitLocked(p)
		p.gen++ // a hello being made now is superseded too
	}
	if s.initiator {
		// Keep a responder session waiting for confirmation as the
		// previous one when there is no current: the peer may be sealing
		// under it (its hello crossed ours); it only receives.
		keep, drop := p.current, p.next
		if keep == nil {
			keep, drop = p.next, nil
		}
		c.unindexLocked(p, p.previous, drop, p.nextOld)
		p.previous, p.current, p.next, p.nextOld = keep, s, nil, nil
		p.established = true
	} else {
		// A responder session waits for the peer's first sealed
		// datagram (confirmLocked) before it is used to send.
		// Keep the one before: the initiator may have retried before our
		// first reply reached it, and then confirms that one.
		c.unindexLocked(p, p.nextOld)
		p.nextOld, p.next = p.next, s
	}
	if s.initiator {
		// Our hello was answered: the identity holds the address. A
		// responder session's identity counts once it is confirmed.
		p.identity = identity
	}
	p.lastHandshake = wall
	p.failErr, p.refused, p.silent = nil, nil, false
	p.lastSeen.Store(now)
	c.stats.handshakes.Add(1)
	if rekey {
		c.stats.rekeys.Add(1)
	}
	queued := c.flushQueueLocked(p, s)
	p.notifyLocked()
	c.log.Debug("vaultudp: session established", "peer", p.addr, "initiator", s.initiator, "rekey", rekey)
	return queued
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
	keep := p.current
	if p.identity != nil && !bytes.Equal(p.identity, s.identity) {
		// A new identity at a learned peer's address (path.go,
		// replaceable): it replaces the old one only now that it proved
		// it receives at the address, and only if the old one did not
		// answer its liveness challenge meanwhile.
		if p.alive != 0 && p.alive >= p.replacing {
			c.unindexLocked(p, s)
			if p.next == s {
				p.next = nil
			} else {
				p.nextOld = nil
			}
			s.confirmed.Store(false) // the caller drops the datagram
			c.stats.rejected.Add(1)
			return nil
		}
		c.unindexLocked(p, p.current, p.previous)
		keep = nil
		p.live, p.alive, p.replacing = nil, 0, 0
		c.log.Debug("vaultudp: a new identity replaced an unanswering one", "peer", p.addr)
	}
	c.unindexLocked(p, other)
	if keep != p.current {
		p.previous = nil
	} else {
		c.unindexLocked(p, p.previous)
	}
	p.previous, p.current, p.next, p.nextOld = keep, s, nil, nil
	p.identity = s.identity
	p.established = true
	p.notifyLocked()
	return c.flushQueueLocked(p, s)
}

// flushQueueLocked hands the datagrams waiting for a session to the
// caller once s is p's current session. Writers wait until flush has sent
// them, so that a datagram written after one that waited does not overtake
// it.
func (c *Conn) flushQueueLocked(p *peer, s *session) [][]byte {
	if p.current != s || len(p.queue) == 0 || p.flushed != nil {
		return nil
	}
	p.flushed = make(chan struct{})
	return c.takeQueueLocked(p)
}

// flush sends datagrams that waited for s, then lets the writers that
// wait for it (see install) go on.
func (c *Conn) flush(p *peer, s *session, to netip.AddrPort, queued [][]byte) {
	if len(queued) == 0 {
		return
	}
	for _, b := range queued {
		if err := c.sendData(p, s, to, b); err != nil {
			c.log.Debug("vaultudp: sending queued datagram", "peer", to, "err", err)
		}
	}
	p.mu.Lock()
	close(p.flushed)
	p.flushed = nil
	p.mu.Unlock()
}

// receiveLimit is the age at which a session stops opening datagrams: its
// send limit (rejectAfter) plus a handshake timeout, because the two ends
// made their copies up to a round trip apart, and the datagrams the older
// end sealed last are still on their way.
func (c *Conn) receiveLimit() time.Duration {
	return rejectAfter(c.cfg.KeyLifetime) + c.cfg.HandshakeTimeout
}

// usableLocked reports whether s can carry datagrams now.
func (c *Conn) usableLocked(s *session, now int64) bool {
	return s != nil && time.Duration(now-s.created) < rejectAfter(c.cfg.KeyLifetime) &&
		s.sendCounter.Load() < counterLimit
}

// sendSessionLocked returns the session to seal under, or nil.
func (c *Conn) sendSessionLocked(p *peer, now int64) *session {
	// A responder's new session (p.next) is not used before the peer
	// confirms it: a replayed hello, or an initiator that refused our key,
	// would otherwise swallow what we send.
	if c.usableLocked(p.current, now) {
		return p.current
	}
	return nil
}

// needsRekey reports whether s is due for renewal. The initiator of a
// session renews it after KeyLifetime, the responder a quarter of a
// lifetime later, so both rarely start at once.
func (c *Conn) needsRekey(s *session, now int64) bool {
	age := time.Duration(now - s.created)
	due := c.cfg.KeyLifetime
	if !s.initiator {
		due += c.cfg.KeyLifetime / 4
	}
	return age >= due || s.sendCounter.Load() >= rekeyAfterMessages
}
