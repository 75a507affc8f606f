package vaultudp

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// maxQueued is the number of datagrams that wait per peer for a
// handshake to complete.
const maxQueued = 32

// peer is the state kept for one remote address.
type peer struct {
	configured bool
	pinned     ed25519.PublicKey // nil: not pinned
	policy     Policy            // resolved: never PolicyDefault
	limiter    *rate.Limiter     // nil: unlimited

	// seenSealed is set once a sealed datagram from the peer opened:
	// from then on, plaintext from it is a downgrade.
	seenSealed atomic.Bool

	// mu guards the fields below.
	mu            sync.Mutex
	addr          netip.AddrPort
	identity      ed25519.PublicKey // the key of its sessions (remembered: trust on first use)
	current       *session
	previous      *session    // kept until it expires, for datagrams in flight
	next          *session    // a responder session waiting for confirmation
	nextOld       *session    // the one before, if the initiator retried: either may be confirmed
	init          *initiation // the hello of this attempt awaiting a reply
	prevInit      *initiation // the one it replaced: a slow reply to it still completes
	initStart     int64       // Conn clock at the first hello of this attempt
	initSent      int64       // Conn clock at the last hello sent
	queue         [][]byte
	flushed       chan struct{} // non-nil while queue's datagrams are being sent; closed after
	failErr       error         // the last attempt's failure, until failedAt+backoff
	failedAt      int64
	lastSeen      int64 // Conn clock at the last datagram from or to it
	lastHandshake time.Time
	established   bool          // it has had a confirmed session
	changed       chan struct{} // closed and replaced when a session comes or an attempt fails
	removed       bool

	v2 *v2Peer // non-nil for a ProtocolV2 peer: its state is there (v2conn.go)

	connTo atomic.Pointer[peerQueue] // non-nil while a net.Conn from ConnTo reads this peer (dial.go)
}

// PeerInfo describes a peer.
type PeerInfo struct {
	Addr          netip.AddrPort
	PublicKey     ed25519.PublicKey // the pinned key, else the key of its session; nil if none yet
	Policy        Policy
	Protocol      Protocol
	Configured    bool      // added by AddPeer or Config.Peers, not learned from the network
	Established   bool      // it has a session now
	LastHandshake time.Time // zero if none
}

func (c *Conn) newPeer(addr netip.AddrPort, pc *PeerConfig) *peer {
	p := &peer{addr: addr, policy: c.cfg.Policy, changed: make(chan struct{}), lastSeen: c.now()}
	if pc != nil {
		p.configured = true
		p.pinned = slices.Clone(pc.PublicKey)
		if pc.Policy != PolicyDefault {
			p.policy = pc.Policy
		}
	}
	if c.cfg.RateLimit > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(c.cfg.RateLimit), c.cfg.RateBurst)
	}
	return p
}

// notifyLocked wakes the goroutines waiting in Handshake.
func (p *peer) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// closeLocked ends the peer: no sessions, no queue. The caller removes
// its indexes.
func (p *peer) closeLocked(reason error) {
	p.removed = true
	p.current, p.previous, p.next, p.nextOld, p.init, p.prevInit = nil, nil, nil, nil, nil, nil
	p.queue = nil
	p.failErr = reason
	p.notifyLocked()
}

// AddPeer adds a peer and starts the handshake with it at once (unless
// its policy is Plaintext). A learned peer at the same address (one that
// contacted the Conn first) is replaced, its sessions dropped.
func (c *Conn) AddPeer(pc PeerConfig) error {
	if err := pc.check(); err != nil {
		return err
	}
	if c.isClosed() {
		return c.opError("add peer", nil, ErrClosed)
	}
	addr := normAddr(pc.Addr)
	c.mu.Lock()
	if old := c.peers[addr]; old != nil {
		if old.configured {
			c.mu.Unlock()
			return fmt.Errorf("%w: %v is already a peer", ErrInvalidConfig, addr)
		}
		c.dropPeerLocked(old, ErrUnknownPeer)
	}
	p := c.newPeer(addr, &pc)
	if pc.Protocol == ProtocolV2 {
		// Protocol v2 (v2conn.go): the reference's key exchange, no handshake.
		if err := c.v2AddLocked(p, &pc); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.peers[addr] = p
	c.mu.Unlock()
	if p.v2 != nil {
		c.v2Start(p.v2)
		return nil
	}
	if p.policy != Plaintext {
		c.startHandshake(p)
	}
	return nil
}

// dropPeerLocked removes p; c.mu is held.
func (c *Conn) dropPeerLocked(p *peer, reason error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.peers[p.addr] == p {
		delete(c.peers, p.addr)
	}
	if !p.configured {
		c.learned--
	}
	c.stats.dropHandshakeTimeout.Add(uint64(len(p.queue)))
	c.unindexLocked(p, p.current, p.previous, p.next, p.nextOld)
	c.clearInitLocked(p)
	p.closeLocked(reason)
}

// unindexLocked forgets sessions of p; p.mu is held.
func (c *Conn) unindexLocked(p *peer, ss ...*session) {
	c.idxMu.Lock()
	defer c.idxMu.Unlock()
	for _, s := range ss {
		if s != nil && c.sessions[s.localIndex] == s {
			delete(c.sessions, s.localIndex)
		}
	}
}

// RemovePeer removes a peer, configured or learned, and drops its keys and
// queued datagrams. The address's remembered key (trust on first use) is
// forgotten with it.
func (c *Conn) RemovePeer(addr netip.AddrPort) error {
	addr = normAddr(addr)
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[addr]
	if p == nil {
		return fmt.Errorf("%w: %v", ErrUnknownPeer, addr)
	}
	c.dropPeerLocked(p, fmt.Errorf("%w: %v was removed", ErrUnknownPeer, addr))
	if p.v2 != nil {
		c.v2Remove(p.v2) // protocol v2 (v2conn.go)
	}
	return nil
}

// HasPeer reports whether addr is a peer, configured or learned.
func (c *Conn) HasPeer(addr netip.AddrPort) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.peers[normAddr(addr)] != nil
}

// Peers lists the peers, configured and learned, sorted by address.
func (c *Conn) Peers() []PeerInfo {
	return c.peerInfos(func(netip.AddrPort) bool { return true })
}

// PeersByIP lists the peers at ip, on any port.
func (c *Conn) PeersByIP(ip netip.Addr) []PeerInfo {
	ip = ip.Unmap()
	return c.peerInfos(func(a netip.AddrPort) bool { return a.Addr() == ip })
}

func (c *Conn) peerInfos(match func(netip.AddrPort) bool) []PeerInfo {
	c.mu.RLock()
	ps := make([]*peer, 0, len(c.peers))
	for a, p := range c.peers {
		if match(a) {
			ps = append(ps, p)
		}
	}
	c.mu.RUnlock()
	out := make([]PeerInfo, 0, len(ps))
	now := c.now()
	for _, p := range ps {
		p.mu.Lock()
		key := p.pinned
		if key == nil {
			key = p.identity
		}
		out = append(out, PeerInfo{
			Addr:          p.addr,
			PublicKey:     slices.Clone(key),
			Policy:        p.policy,
			Protocol:      ProtocolV3,
			Configured:    p.configured,
			Established:   c.usableLocked(p.current, now),
			LastHandshake: p.lastHandshake,
		})
		if p.v2 != nil {
			p.v2.info(&out[len(out)-1]) // protocol v2 (v2conn.go)
		}
		p.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b PeerInfo) int { return a.Addr.Compare(b.Addr) })
	return out
}

// peerFor returns the peer at addr, creating a learned one if there is
// none and create is set.
func (c *Conn) peerFor(addr netip.AddrPort, create bool) (*peer, error) {
	c.mu.RLock()
	p := c.peers[addr]
	c.mu.RUnlock()
	if p != nil || !create {
		return p, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p = c.peers[addr]; p != nil {
		return p, nil
	}
	if c.learned >= c.cfg.MaxPeers {
		c.stats.peerLimit.Add(1)
		return nil, fmt.Errorf("%w: %v: MaxPeers (%d) reached", ErrNoSession, addr, c.cfg.MaxPeers)
	}
	p = c.newPeer(addr, nil)
	c.peers[addr] = p
	c.learned++
	return p, nil
}

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
	if p.v2 != nil {
		return c.v2Handshake(ctx, p.v2) // protocol v2 (v2conn.go)
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

// newIndexLocked picks a random unused non-zero session index; idxMu is
// held.
func (c *Conn) newIndexLocked() uint32 {
	var b [4]byte
	for {
		rand.Read(b[:])
		i := binary.BigEndian.Uint32(b[:])
		if i == 0 {
			continue
		}
		if _, ok := c.sessions[i]; ok {
			continue
		}
		if _, ok := c.initiated[i]; ok {
			continue
		}
		return i
	}
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

// send is the write path: seal under the peer's session, or queue and
// start the handshake, or send in clear where the policy says so.
func (c *Conn) send(b []byte, addr netip.AddrPort) error {
	if c.isClosed() {
		return ErrClosed
	}
	if isClosed(c.writeDeadline.wait()) {
		return os.ErrDeadlineExceeded
	}
	if vp := c.v2.lookup(addr); vp != nil {
		return c.sendV2(vp, b) // protocol v2 (v2conn.go): its own size limit and path
	}
	if len(b) > c.maxPayload {
		c.stats.tooLarge.Add(1)
		return &tooLargeError{n: len(b), max: c.maxPayload}
	}
	if !addr.IsValid() || addr.Port() == 0 {
		return fmt.Errorf("%w: invalid destination %v", ErrNoSession, addr)
	}
	p, err := c.peerFor(addr, true)
	if err != nil {
		return err
	}
	if p.policy == Plaintext {
		p.mu.Lock()
		p.lastSeen = c.now()
		p.mu.Unlock()
		return c.sendData(nil, addr, b)
	}
	s, to, err := c.acquireSession(p)
	if err != nil {
		return err
	}
	if s != nil {
		return c.sendData(s, to, b)
	}
	now := c.now() // p.mu is held from here on
	backoff := p.init == nil && p.failErr != nil && time.Duration(now-p.failedAt) < c.cfg.HandshakeTimeout
	if p.policy == Opportunistic {
		// Opportunistic sends in clear while there is no session, also
		// after a failed handshake: a peer that refuses encryption is
		// not an error for it. It starts a new attempt once the backoff
		// after a failure has passed.
		var hello []byte
		if p.init == nil && !backoff && !p.removed {
			p.failErr = nil
			hello = c.initiateLocked(p)
		}
		to = p.addr
		p.mu.Unlock()
		// The datagram goes before the hello: once the hello is out, the
		// session (and the peer's "seen sealed" rule) may come before a
		// later open datagram, which the peer would then drop.
		err := c.sendData(nil, to, b)
		if hello != nil {
			c.sendControl(to, hello)
		}
		return err
	}
	if backoff {
		err := p.failErr
		p.mu.Unlock()
		return err
	}
	var hello []byte
	if p.init == nil && p.next == nil && !p.removed {
		// (With p.next set, the peer's confirmation is on its way: wait.)
		p.failErr = nil
		hello = c.initiateLocked(p)
	}
	to = p.addr
	if len(p.queue) >= maxQueued {
		p.mu.Unlock()
		return fmt.Errorf("%w: %v: handshake under way and %d datagrams already wait for it", ErrNoSession, to, maxQueued)
	}
	p.queue = append(p.queue, bytes.Clone(b))
	p.mu.Unlock()
	if hello != nil {
		c.sendControl(to, hello)
	}
	return nil
}

// acquireSession returns p's session to seal under now, starting a rekey
// when one is due, with p.mu released. With no session it returns nil and
// keeps p.mu held for the caller's no-session path, so that no session can
// come and flush the queue in between. Either way it first waits while
// datagrams that waited for the handshake are going out, so as not to
// overtake them (at most maxQueued sends, on the reader goroutine).
func (c *Conn) acquireSession(p *peer) (*session, netip.AddrPort, error) {
	p.mu.Lock()
	for p.flushed != nil {
		ch := p.flushed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-c.closed:
			return nil, netip.AddrPort{}, ErrClosed
		}
		p.mu.Lock()
	}
	now := c.now()
	p.lastSeen = now
	s := c.sendSessionLocked(p, now)
	if s == nil {
		return nil, p.addr, nil
	}
	var hello []byte
	if p.init == nil && p.next == nil && c.needsRekey(s, now) {
		hello = c.initiateLocked(p)
	}
	to := p.addr
	p.mu.Unlock()
	if hello != nil {
		c.sendControl(to, hello)
	}
	return s, to, nil
}

// Broadcast writes p to every peer, configured and learned, and returns
// how many sends succeeded. Failures are joined in the error, each naming
// its peer.
func (c *Conn) Broadcast(b []byte) (int, error) {
	if c.isClosed() {
		// Also with no peers to fail: calls after Close return errors.
		return 0, c.opError("write", nil, ErrClosed)
	}
	c.mu.RLock()
	addrs := make([]netip.AddrPort, 0, len(c.peers))
	for a := range c.peers {
		addrs = append(addrs, a)
	}
	c.mu.RUnlock()
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	var errs []error
	n := 0
	for _, a := range addrs {
		if _, err := c.WriteToUDPAddrPort(b, a); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

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
	c.v2Tick(now) // protocol v2 key exchanges (v2conn.go)
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
