package vaultudp

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
)

// Handshake waits until the peer at addr has a session, starting a
// handshake if none is under way (also after a failed one). It returns an
// error wrapping ErrHandshakeTimeout if the attempt fails, ctx's error if
// ctx ends first. An address that is not a peer becomes a learned one, as
// a write to it would.
func (c *Conn) Handshake(ctx context.Context, addr netip.AddrPort) error {
	addr = normAddr(addr)
	p, err := c.peerFor(addr, true)
	if err != nil {
		return err
	}
	if p.proto != nil {
		return p.proto.handshake(ctx) // protocol v2 (proto_v2.go)
	}
	if p.policy == Plaintext {
		return fmt.Errorf("%w: %v: policy is plaintext", ErrNoSession, addr)
	}
	started := false
	for {
		p.mu.Lock()
		if p.removed {
			err := p.failErr
			p.mu.Unlock()
			return err
		}
		if c.usableLocked(p.current, c.now()) {
			p.mu.Unlock()
			return nil
		}
		if started && p.init == nil && p.failErr != nil {
			err := p.failErr
			p.mu.Unlock()
			return err
		}
		var hello []byte
		if p.init == nil && p.next == nil {
			p.failErr = nil
			hello = c.initiateLocked(p)
		}
		started = true
		ch, to := p.changed, p.addr
		p.mu.Unlock()
		if hello != nil {
			c.sendControl(to, hello)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return c.opError("handshake", nil, ErrClosed)
		}
	}
}

// startHandshake starts an initiation with p unless one is under way.
func (c *Conn) startHandshake(p *peer) {
	p.mu.Lock()
	var hello []byte
	if p.init == nil && !p.removed {
		p.failErr = nil
		hello = c.initiateLocked(p)
	}
	to := p.addr
	p.mu.Unlock()
	if hello != nil {
		c.sendControl(to, hello)
	}
}

// initiateLocked makes a new hello for p, replacing any pending one, and
// returns it for the caller to send once p.mu is released.
func (c *Conn) initiateLocked(p *peer) []byte {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	now := c.now()
	c.idxMu.Lock()
	if p.prevInit != nil {
		delete(c.initiated, p.prevInit.localIndex)
	}
	if p.init == nil {
		p.initStart = now
	}
	idx := c.newIndexLocked()
	c.initiated[idx] = p
	c.idxMu.Unlock()
	old := p.init
	p.prevInit, p.init = old, c.hs.initiate(c.cfg.now(), idx, eph)
	if old != nil {
		// A retry: the responder may be under load and want the
		// cookie it gave us back.
		p.init.setCookie(old.cookie())
	}
	p.initSent = now
	return p.init.hello
}

// clearInitLocked forgets p's pending initiations.
func (c *Conn) clearInitLocked(p *peer) {
	c.idxMu.Lock()
	for _, i := range []*initiation{p.init, p.prevInit} {
		if i != nil && c.initiated[i.localIndex] == p {
			delete(c.initiated, i.localIndex)
		}
	}
	c.idxMu.Unlock()
	p.init, p.prevInit = nil, nil
}

// failLocked ends p's handshake attempt with a timeout.
func (c *Conn) failLocked(p *peer, now int64) {
	c.clearInitLocked(p)
	p.failErr = fmt.Errorf("%w: no session with %v after %v", ErrHandshakeTimeout, p.addr, c.cfg.HandshakeTimeout)
	p.failedAt = now
	p.lastSeen = now // keep the peer (and its error) a while for writers to see
	c.stats.handshakeFailures.Add(1)
	c.stats.dropHandshakeTimeout.Add(uint64(len(p.queue)))
	p.queue = nil
	p.notifyLocked()
	c.log.Debug("vaultudp: handshake timed out", "peer", p.addr)
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
