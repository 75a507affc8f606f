package vaultudp

import (
	"fmt"
	"time"
)

// tick runs the timers: handshake retries and timeouts, session expiry,
// forgetting idle learned peers.
func (c *Conn) tick() {
	now := c.now()
	c.mu.RLock()
	ps := make([]*peer, 0, len(c.peers))
	for _, p := range c.peers {
		ps = append(ps, p)
	}
	c.mu.RUnlock()
	retry := min(max(c.cfg.HandshakeTimeout/5, 100*time.Millisecond), time.Second)
	reject := rejectAfter(c.cfg.KeyLifetime)
	keep := c.receiveLimit()
	var idle []*peer
	for _, p := range ps {
		p.mu.Lock()
		var hello []byte
		if p.init != nil {
			switch {
			case time.Duration(now-p.initStart) >= c.cfg.HandshakeTimeout:
				c.failLocked(p, now)
			case time.Duration(now-p.initSent) >= retry:
				hello = c.initiateLocked(p)
			}
		}
		for _, sp := range []**session{&p.previous, &p.current, &p.next} {
			if s := *sp; s != nil && time.Duration(now-s.created) >= keep {
				c.unindexLocked(p, s)
				*sp = nil
			}
		}
		for _, sp := range []**session{&p.nextOld, &p.next} {
			if s := *sp; s != nil && time.Duration(now-s.created) >= c.cfg.HandshakeTimeout {
				// Never confirmed: the initiator did not take our reply.
				c.unindexLocked(p, s)
				*sp = nil
				p.notifyLocked() // Handshake callers wait on it
			}
		}
		if p.next == nil && p.nextOld != nil {
			p.next, p.nextOld = p.nextOld, nil
		}
		if p.next == nil && p.current == nil {
			if len(p.queue) > 0 && p.init == nil && hello == nil {
				hello = c.initiateLocked(p) // the queue gets an attempt of its own
			}
		}
		// A learned peer is forgotten when idle: after a session's
		// lifetime, or after a handshake timeout if it never confirmed a
		// session (a forged or abandoned hello must not hold a slot).
		idleFor := reject
		if !p.established {
			idleFor = c.cfg.HandshakeTimeout
		}
		if !p.configured && p.current == nil && p.next == nil && p.nextOld == nil && p.init == nil &&
			time.Duration(now-p.lastSeen) >= idleFor {
			idle = append(idle, p)
		}
		to := p.addr
		p.mu.Unlock()
		if hello != nil {
			c.sendControl(to, hello)
		}
	}
	if len(idle) > 0 {
		c.mu.Lock()
		for _, p := range idle {
			if c.peers[p.addr] == p {
				c.dropPeerLocked(p, fmt.Errorf("%w: %v was idle", ErrUnknownPeer, p.addr))
			}
		}
		c.mu.Unlock()
	}
	if time.Duration(now-c.helloSweep) >= time.Second {
		c.helloSweep = now
		c.forgetOldHellos()
	}
	c.v2Tick(now) // protocol v2 key exchanges (proto_v2.go)
}

// forgetOldHellos drops the remembered hello timestamps that are outside
// the freshness window: a hello that old is refused anyway.
func (c *Conn) forgetOldHellos() {
	edge := uint64(c.cfg.now().Add(-c.cfg.FreshnessWindow).UnixNano())
	c.mu.Lock()
	for k, ts := range c.lastHello {
		if ts < edge {
			delete(c.lastHello, k)
		}
	}
	c.mu.Unlock()
}

// housekeeping runs the Conn's timers until Close.
func (c *Conn) housekeeping() {
	defer c.wg.Done()
	t := time.NewTicker(housekeepingEvery)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
			c.clock.Store(int64(time.Since(c.start)))
			c.tick()
		}
	}
}

// housekeepingEvery is the tick of the Conn's timer goroutine: its coarse
// clock, handshake retries and timeouts, session expiry.
const housekeepingEvery = 50 * time.Millisecond
