package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"time"
)

// What the responder remembers of the hellos it answered (PROTOCOL.md 5.4).
// A hello is refused as replayed when its timestamp is not newer than the
// last one answered from its address, is one already answered from any
// address, or lies more than helloReorder behind the newest answered from
// its identity. Within helloReorder a hello older than the newest is still
// answered if it comes from another address: one client reaching one
// server on two paths at once sends two hellos a moment apart, and the
// earlier one may arrive second; refusing it would cost that path a full
// retry.
const (
	// helloReorder is how far behind the identity's newest answered hello
	// a hello from another path may be: the retry interval's ceiling
	// (retryAfter), since a hello overtaken by more than that is sent
	// again, newer, by then anyway.
	helloReorder = time.Second

	// helloPaths is how many answered hellos per identity are remembered
	// within helloReorder; past that the oldest is forgotten and every
	// timestamp up to it refused.
	helloPaths = 8
)

// helloLog is what the responder remembers of one identity's answered
// hellos. It is guarded by Conn.mu.
type helloLog struct {
	newest uint64 // the newest answered timestamp
	floor  uint64 // every timestamp at or below it is refused
	n      int
	recent [helloPaths]answeredHello // within helloReorder of newest
}

type answeredHello struct {
	ts   uint64
	from netip.AddrPort
}

// fresh reports whether a hello with timestamp ts from from may be
// answered: not replayed, not overtaken on its own path, and not older
// than the identity's newest answered hello by more than helloReorder.
func (h *helloLog) fresh(ts uint64, from netip.AddrPort) bool {
	if h == nil {
		return true
	}
	switch {
	case ts <= h.floor:
		return false
	case ts > h.newest:
		return true
	case h.newest-ts > uint64(helloReorder):
		return false
	}
	for _, e := range h.recent[:h.n] {
		if ts == e.ts || (e.from == from && ts < e.ts) {
			return false
		}
	}
	return true
}

// record remembers an answered hello. Entries more than helloReorder
// behind the newest are dropped (fresh refuses anything that old without
// them); when the rest fill the log, the oldest is dropped and becomes the
// floor.
func (h *helloLog) record(ts uint64, from netip.AddrPort) {
	h.newest = max(h.newest, ts)
	k := 0
	for _, e := range h.recent[:h.n] {
		if h.newest-e.ts <= uint64(helloReorder) {
			h.recent[k] = e
			k++
		}
	}
	h.n = k
	if h.n == helloPaths {
		oldest := 0
		for i, e := range h.recent {
			if e.ts < h.recent[oldest].ts {
				oldest = i
			}
		}
		h.floor = max(h.floor, h.recent[oldest].ts)
		h.recent[oldest] = h.recent[h.n-1]
		h.n--
	}
	h.recent[h.n] = answeredHello{ts, from}
	h.n++
}

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
	fresh := c.lastHello[idKey].fresh(m.timestamp, from)
	full := pr == nil && c.learned >= c.cfg.MaxPeers
	c.mu.RUnlock()
	if full {
		// Refused before any costly work: a flood of signed hellos from
		// new addresses cannot buy signature checks once the table is
		// full.
		c.stats.peerLimit.Add(1)
		return
	}
	if !fresh {
		c.stats.stale.Add(1) // a replayed hello, or one overtaken on its path
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
		h := c.lastHello[idKey]
		if h == nil {
			h = new(helloLog)
			c.lastHello[idKey] = h
		}
		h.record(m.timestamp, from)
		c.mu.Unlock()
		if pr != nil {
			// Kept to explain a handshake timeout (timers.go), but not
			// the peer's LastFailure: nothing proved the hello came from
			// the peer's address, and anyone can send one from there.
			pr.mu.Lock()
			pr.refused = err
			pr.mu.Unlock()
		}
		c.event(Event{Kind: EventRefused, Addr: from, Key: m.identity, Err: err})
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
	if !c.lastHello[idKey].fresh(m.timestamp, from) {
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
	// Only a hello that is answered is remembered.
	h := c.lastHello[idKey]
	if h == nil {
		h = new(helloLog)
		c.lastHello[idKey] = h
	}
	h.record(m.timestamp, from)
	c.mu.Unlock()

	queued := c.install(pr, s, keys.peerIdentity, wall, nil)
	c.sendControlFrom(from, local, reply)
	c.flush(pr, s, from, queued)
}
