package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
)

// handleHello answers a hello from from that arrived at local, from there.
// The reader applied the cookie rule to it already (helloGate).
func (c *Conn) handleHello(msg []byte, from netip.AddrPort, local netip.Addr) {
	m, err := parseHello(msg)
	if err != nil {
		c.stats.malformed.Add(1)
		return
	}
	wall := c.cfg.now() // the cookie rule was applied before it was queued (helloGate)
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
	// A learned peer whose old identity did not answer a liveness
	// challenge (path.go): perhaps a client that restarted with a new
	// key. Its hello is answered; the new identity takes the address only
	// if it confirms the session from there (confirmLocked).
	replacing := pr != nil && c.tofuOnly(pr) && !pr.hasIdentity(m.identity) && c.replaceable(pr)
	if err := c.trust(pr, from, m.identity); err != nil && !replacing {
		c.stats.rejected.Add(1)
		// Refused once, refused for good: a replay of this hello is
		// stale, and costs neither a signature check nor a liveness
		// challenge.
		c.mu.Lock()
		if m.timestamp > c.lastHello[idKey] {
			c.lastHello[idKey] = m.timestamp
		}
		c.mu.Unlock()
		if pr != nil {
			// Kept to explain a handshake timeout (timers.go), but not
			// the peer's LastFailure: nothing proved the hello came from
			// the peer's address, and anyone can send one from there.
			pr.mu.Lock()
			pr.refused = err
			pr.mu.Unlock()
		}
		c.log.Debug("vaultudp: handshake refused", "peer", from, "err", err)
		return
	}
	if pr != nil {
		pr.mu.Lock()
		weInitiate := pr.handshakingLocked() && bytes.Compare(c.hs.public, m.identity) > 0
		pr.mu.Unlock()
		if weInitiate {
			// Both sides sent hellos at once: the larger identity
			// initiates, the smaller answers, and one session results.
			return
		}
	}
	eph, err := c.ephemeral()
	if err != nil {
		return
	}
	idx := c.index.reserve()
	reply, keys, err := c.hs.respond(m, wall, idx, eph)
	if err != nil {
		c.index.release(idx)
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
		c.index.release(idx)
		return
	}
	c.mu.Lock()
	if m.timestamp <= c.lastHello[idKey] {
		c.mu.Unlock()
		c.index.release(idx)
		c.stats.stale.Add(1)
		return
	}
	if pr = c.peers[from]; pr == nil {
		if c.learned >= c.cfg.MaxPeers {
			c.mu.Unlock()
			c.index.release(idx)
			c.stats.peerLimit.Add(1)
			return
		}
		pr = c.newPeer(from, nil)
		c.peers[from] = pr
		c.learned++
	}
	c.lastHello[idKey] = m.timestamp // only for a hello that is answered
	c.mu.Unlock()

	queued := c.install(pr, s, keys.peerIdentity, wall, nil)
	c.sendControlFrom(from, local, reply)
	c.flush(pr, s, from, queued)
}
