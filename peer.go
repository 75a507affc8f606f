package vaultudp

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

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

	proto peerProto // non-nil for a ProtocolV2 peer: its state is there (proto_v2.go)
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
		// Protocol v2 (proto_v2.go): the reference's key exchange, no handshake.
		if err := c.v2AddLocked(p, &pc); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.peers[addr] = p
	c.mu.Unlock()
	if p.proto != nil {
		p.proto.start() // protocol v2 (proto_v2.go)
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
	if p.proto != nil {
		p.proto.remove() // protocol v2 (proto_v2.go)
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
		if p.proto != nil {
			p.proto.info(&out[len(out)-1]) // protocol v2 (proto_v2.go)
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
