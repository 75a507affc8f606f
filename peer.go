package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// peer is the state kept for one remote address. Its fields are grouped
// by what guards them, as in Conn.
type peer struct {
	// Written under both c.peers.mu and mu (AddPeer adopting a learned peer),
	// so read under either.
	configured bool
	origin     peerOrigin
	pinned     ed25519.PublicKey // nil: not pinned
	keepalive  time.Duration     // PeerConfig.Keepalive

	// Set when the peer is made, never changed.
	limiter *rate.Limiter // nil: unlimited
	proto   peerProto     // non-nil for a ProtocolV2 peer: its state is there (proto_v2.go)

	// Atomic: the data path reads and writes them with no lock.
	policyV   atomic.Int32           // its Policy, resolved (never PolicyDefault): AddPeer may adopt a learned peer while it is in use
	zskip     compressSkip           // whether its payloads are worth trying to compress (compress.go)
	helloPath atomic.Pointer[pathAt] // the path's size when our last hello was sent (handshake_initiator.go)
	// Counters for PeerInfo.
	datagramsIn, bytesIn, datagramsOut, bytesOut atomic.Uint64
	// The keepalive and silence timers' marks (timers.go): Conn clock | 1,
	// zero for none.
	sentAt     atomic.Int64 // the last sealed datagram sent
	unanswered atomic.Int64 // the first sealed datagram sent since the last authenticated one received
	dataIn     atomic.Int64 // the first payload received since the last sealed datagram sent
	// lastSeen is the Conn clock at the last datagram from the peer (or
	// to it, once it has proved itself).
	lastSeen atomic.Int64
	// at is addr, for the receive path to read without the lock; it
	// changes only with addr (newPeer, movePeer).
	at atomic.Pointer[netip.AddrPort]
	// seenSealed is set once a sealed datagram from the peer opened:
	// from then on, plaintext from it is a downgrade.
	seenSealed atomic.Bool
	// local is the local address its last authenticated datagram from
	// its validated address arrived at, where the socket tells
	// (path.go); nil until then.
	local atomic.Pointer[netip.Addr]
	// flushing is set while the datagrams that waited for a handshake
	// are being sent, to a channel closed when they are: writers wait
	// for it (acquireSession). Set and cleared under mu, read without.
	flushing atomic.Pointer[chan struct{}]
	connTo   atomic.Pointer[peerQueue] // non-nil while a net.Conn from ConnTo reads this peer (dial.go)

	// kp holds its sessions, under a lock of its own (keypairs.go).
	kp keypairs
	// resend keeps its last datagrams, to go again after its restart (resend.go).
	resend resendRing

	// mu guards the fields below.
	mu sync.Mutex

	// Where it is and who: addr is also written under c.peers.mu (movePeer).
	addr     netip.AddrPort
	identity ed25519.PublicKey // the key of its sessions (remembered: trust on first use)

	// The initiator's side of its handshakes (handshake_initiator.go).
	hs initiatorState

	// Replies we sent, waiting for the initiator's final message
	// (handshake_responder.go): the newest, and the one before.
	respNew, respOld *response
	// psk is its preshared key (PeerConfig.PresharedKey), nil for the
	// Config's; also written under c.peers.mu (AddPeer adopting a learned peer).
	psk *[32]byte

	// Datagrams written before a session, waiting for one (send.go).
	queue       [][]byte
	queuedBytes int64 // the bytes in queue

	// Paths (path.go).
	credit    int        // bytes received from it before it proved it receives (origin plaintext)
	path      *pathCheck // a new address being validated
	live      *pathCheck // a liveness challenge at addr
	alive     int64      // Conn clock (|1) when it last answered one
	replacing int64      // Conn clock (|1) when a new identity's hello was let in after an unanswered challenge

	// Its life.
	lastHandshake time.Time
	established   bool          // it has had a confirmed session
	changed       chan struct{} // closed when a session comes or an attempt fails; nil until one waits (changedLocked)
	removed       bool
	stranger      bool // in Conn.strangers, not the table: only replies waiting (handshake_responder.go)
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

	// Traffic with the peer: application datagrams delivered from it
	// and sent to it, and their payload bytes.
	DatagramsIn, BytesIn, DatagramsOut, BytesOut uint64

	// LastFailure is the last handshake failure with the peer (a
	// timeout, or a key the trust rules refused, matching
	// ErrHandshakeTimeout or ErrPeerRejected), nil if none.
	LastFailure error
}

func (c *Conn) newPeer(addr netip.AddrPort, pc *PeerConfig) *peer {
	p := &peer{addr: addr}
	p.policyV.Store(int32(c.cfg.Policy))
	p.lastSeen.Store(c.now())
	p.at.Store(&addr)
	if pc != nil {
		p.configured, p.origin = true, originConfig
		p.keepalive = pc.Keepalive
		p.pinned = slices.Clone(pc.PublicKey)
		if pc.PresharedKey != nil {
			k := *pc.PresharedKey
			p.psk = &k
		}
		if pc.Policy != PolicyDefault {
			p.policyV.Store(int32(pc.Policy))
		}
	}
	if c.cfg.RateLimit > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(c.cfg.RateLimit), c.cfg.RateBurst)
	}
	return p
}

// policy returns p's policy.
func (p *peer) policy() Policy { return Policy(p.policyV.Load()) }

// changedLocked returns a channel closed at the peer's next change (a
// session comes, an attempt fails: notifyLocked). It is made when a
// goroutine first waits: most peers never have one waiting, and a channel
// is 96 bytes.
func (p *peer) changedLocked() chan struct{} {
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

// notifyLocked wakes the goroutines waiting for a change (changedLocked).
func (p *peer) notifyLocked() {
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
}

// closeLocked ends the peer: no sessions, no queue. The caller removes
// its indexes.
func (p *peer) closeLocked(reason error) {
	p.removed = true
	p.dropPathLocked() // path.go
	p.kp.clear()
	p.hs.init, p.hs.prevInit = nil, nil
	p.queue = nil
	p.hs.failErr = reason
	p.notifyLocked()
}

// AddPeer adds a peer and starts the handshake with it at once (unless
// its policy is Plaintext). A learned peer at the same address (one that
// contacted the Conn first, perhaps with a hello that crossed this Conn's)
// becomes the configured peer and keeps its sessions if its key fits
// pc.PublicKey (and unconfirmed ones under another key are dropped);
// otherwise, or for ProtocolV2, it is replaced and its sessions dropped.
func (c *Conn) AddPeer(pc PeerConfig) error {
	if !c.ok() {
		return errZeroConn("add peer")
	}
	if err := pc.check(); err != nil {
		return err
	}
	if c.isClosed() {
		return c.opError("add peer", nil, ErrClosed)
	}
	addr := normAddr(pc.Addr)
	c.peers.mu.Lock()
	if old := c.peers.getLocked(addr); old != nil {
		if old.configured {
			c.peers.mu.Unlock()
			return fmt.Errorf("%w: %v is already a peer", ErrInvalidConfig, addr)
		}
		if c.adoptTableLocked(old, &pc) {
			// The peer contacted us first (its hello may have crossed
			// ours): it keeps its sessions, now as a configured peer.
			c.peers.mu.Unlock()
			if old.policy() != Plaintext {
				c.startHandshake(old)
			}
			return nil
		}
		c.dropPeerTableLocked(old, ErrUnknownPeer)
	}
	if s := c.peers.takeStrangerLocked(addr); s != nil {
		// Replies to hellos from there wait for final messages judged
		// by no peer's rules: they go, and the initiator's retry meets
		// the configured peer.
		s.mu.Lock()
		c.clearResponsesLocked(s)
		s.stranger = false
		s.closeLocked(ErrUnknownPeer)
		s.mu.Unlock()
	}
	p := c.newPeer(addr, &pc)
	if pc.Protocol == ProtocolV2 {
		// Protocol v2 (proto_v2.go): the reference's key exchange, no handshake.
		if err := c.v2AddLocked(p, &pc); err != nil {
			c.peers.mu.Unlock()
			return err
		}
	}
	c.peers.insertLocked(p)
	c.peers.mu.Unlock()
	if p.proto != nil {
		p.proto.start() // protocol v2 (proto_v2.go)
		return nil
	}
	if p.policy() != Plaintext {
		c.startHandshake(p)
	}
	return nil
}

// adoptTableLocked makes the learned peer p the configured peer pc describes,
// keeping its sessions, if its identity fits pc (pc pins none, or p's) and
// both speak the native protocol. c.peers.mu is held.
func (c *Conn) adoptTableLocked(p *peer, pc *PeerConfig) bool {
	if pc.Protocol != ProtocolNative {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed || p.proto != nil || (pc.PublicKey != nil && p.identity != nil && !bytes.Equal(p.identity, pc.PublicKey)) {
		return false
	}
	c.peers.configureLocked(p, c.newPeer(p.addr, pc))
	// Replies waiting for their final message stay: the trust rules,
	// now the configured peer's, judge the identity it reveals.
	return true
}

// dropPeerTableLocked removes p; c.peers.mu is held.
func (c *Conn) dropPeerTableLocked(p *peer, reason error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return // dropped already: the count must not go twice
	}
	c.peers.removeLocked(p)
	c.dropHeldLocked(p.path)
	p.path, p.live = nil, nil
	c.stats.dropHandshakeTimeout.Add(uint64(len(c.takeQueueLocked(p))))
	c.index.remove(p.kp.clear()...)
	c.clearInitLocked(p)
	c.clearResponsesLocked(p)
	p.closeLocked(reason)
	if p.connTo.Load() != nil {
		c.kickDirectReader() // its ConnTo's Read may be in the socket (reader.go)
	}
}

// RemovePeer removes a peer, configured or learned, and drops its keys and
// queued datagrams. The address's remembered key (trust on first use) is
// forgotten with it.
func (c *Conn) RemovePeer(addr netip.AddrPort) error {
	if !c.ok() {
		return errZeroConn("remove peer")
	}
	addr = normAddr(addr)
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	p := c.peers.getLocked(addr)
	if p == nil {
		return fmt.Errorf("%w: %v", ErrUnknownPeer, addr)
	}
	c.dropPeerTableLocked(p, fmt.Errorf("%w: %v was removed", ErrUnknownPeer, addr))
	if p.proto != nil {
		p.proto.remove() // protocol v2 (proto_v2.go)
	}
	return nil
}

// HasPeer reports whether addr is a peer, configured or learned.
func (c *Conn) HasPeer(addr netip.AddrPort) bool {
	if !c.ok() {
		return false
	}
	return c.peers.lookup(normAddr(addr)) != nil
}

// Peers lists the peers, configured and learned, sorted by address.
func (c *Conn) Peers() []PeerInfo {
	if !c.ok() {
		return nil
	}
	return c.peerInfos(func(netip.AddrPort) bool { return true })
}

// PeersByIP lists the peers at ip, on any port.
func (c *Conn) PeersByIP(ip netip.Addr) []PeerInfo {
	if !c.ok() {
		return nil
	}
	ip = ip.Unmap()
	return c.peerInfos(func(a netip.AddrPort) bool { return a.Addr() == ip })
}

func (c *Conn) peerInfos(match func(netip.AddrPort) bool) []PeerInfo {
	ps := c.peers.snapshot()
	out := make([]PeerInfo, 0, len(ps))
	now := c.now()
	for _, p := range ps {
		if match(p.addrLoad()) {
			out = append(out, c.infoOf(p, now))
		}
	}
	slices.SortFunc(out, func(a, b PeerInfo) int { return a.Addr.Compare(b.Addr) })
	return out
}

// infoOf describes p at now.
func (c *Conn) infoOf(p *peer, now int64) PeerInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := p.pinned
	if key == nil {
		key = p.identity
	}
	info := PeerInfo{
		Addr:          p.addr,
		PublicKey:     slices.Clone(key),
		Policy:        p.policy(),
		Protocol:      ProtocolNative,
		Configured:    p.configured,
		Established:   c.usable(p.kp.current(), now),
		LastHandshake: p.lastHandshake,
		DatagramsIn:   p.datagramsIn.Load(),
		BytesIn:       p.bytesIn.Load(),
		DatagramsOut:  p.datagramsOut.Load(),
		BytesOut:      p.bytesOut.Load(),
		LastFailure:   p.hs.lastFailure,
	}
	if p.proto != nil {
		p.proto.info(&info) // protocol v2 (proto_v2.go)
	}
	return info
}

// How a peer came to be. What the Conn may send of its own accord to a
// peer that has not proved it receives depends on it.
type peerOrigin uint8

const (
	lookupOnly      peerOrigin = iota // peerFor: do not create
	originConfig                      // AddPeer or Config.Peers
	originWrite                       // the application wrote to it, or called Handshake
	originHello                       // it sent a hello
	originPlaintext                   // it sent plaintext (Opportunistic, Plaintext)
)

// maxPlaintextPeers bounds the learned peers known only from plaintext;
// a new one evicts the oldest, so plaintext from many addresses cannot
// fill the table (MaxPeers) and lock out clients that handshake.
const maxPlaintextPeers = 1024

// peerFor returns the peer at addr, creating a learned one of the given
// origin if there is none (unless origin is lookupOnly).
func (c *Conn) peerFor(addr netip.AddrPort, origin peerOrigin) (*peer, error) {
	p := c.peers.lookup(addr)
	if p != nil || origin == lookupOnly {
		return p, nil
	}
	c.peers.mu.Lock()
	defer c.peers.mu.Unlock()
	if p = c.peers.getLocked(addr); p != nil {
		return p, nil
	}
	if origin == originWrite && c.peers.plainEvicted.has(addr) {
		// Known only from plaintext, then evicted: the application's
		// answer does not make it an address the Conn may send hellos
		// to and retry (mayInitiateLocked), however it came back.
		origin = originPlaintext
	}
	if origin == originPlaintext && c.peers.plain >= maxPlaintextPeers {
		c.evictPlaintextPeerTableLocked()
	}
	if c.peers.learnedFullLocked() {
		return nil, fmt.Errorf("%w: %v: MaxPeers (%d) reached", ErrNoSession, addr, c.cfg.MaxPeers)
	}
	return c.addLearnedTableLocked(addr, origin), nil
}

// addLearnedTableLocked makes a learned peer at addr; c.peers.mu is held
// and the caller checked MaxPeers.
func (c *Conn) addLearnedTableLocked(addr netip.AddrPort, origin peerOrigin) *peer {
	p := c.peers.takeStrangerLocked(addr)
	if p != nil {
		// A reply waits there for its final message: the stranger
		// becomes the peer, its handshake still completes, and for the
		// Conn's own hellos the address counts as one that sent a
		// hello (mayInitiateLocked): a write to it waits for that
		// handshake, as when the hello made the peer.
		if origin == originWrite {
			origin = originHello
		}
		p.mu.Lock()
		p.stranger, p.origin = false, origin
		p.mu.Unlock()
	} else {
		p = c.newPeer(addr, nil)
		p.origin = origin
	}
	c.peers.insertLocked(p)
	return p
}

// evictPlaintextPeerTableLocked forgets the oldest peer known only from
// plaintext; c.peers.mu is held.
func (c *Conn) evictPlaintextPeerTableLocked() {
	if q := c.peers.plainCandidateLocked(); q != nil {
		addr := q.addrLoad()
		c.peers.plainEvicted.add(addr)
		c.dropPeerTableLocked(q, fmt.Errorf("%w: %v: evicted by newer plaintext peers", ErrUnknownPeer, addr))
	}
}

func (p *peer) addrLoad() netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// addrSet remembers addresses in a fixed table of keyed hashes, four to
// a bucket, the oldest of a bucket replaced first: an address is forgotten
// only after four later ones fell into its bucket, and no address can be
// made to look remembered without its own hash. It holds the peers known
// only from plaintext that were evicted (plainEvicted), so that its memory
// stays fixed however many addresses pass. The zero value is empty; it is
// guarded by c.peers.mu.
type addrSet struct {
	seed  maphash.Seed
	slots []uint64 // made at the first add: addrSetBuckets buckets of addrSetWays
	next  []uint8  // per bucket, the way replaced next
}

// The size of an addrSet: 4,096 hashes, 32 KiB.
const (
	addrSetBuckets = 1024
	addrSetWays    = 4
)

func (s *addrSet) add(a netip.AddrPort) {
	if s.slots == nil {
		s.seed = maphash.MakeSeed()
		s.slots, s.next = make([]uint64, addrSetBuckets*addrSetWays), make([]uint8, addrSetBuckets)
	}
	if s.has(a) {
		return
	}
	h := maphash.Comparable(s.seed, a) | 1
	b := (h >> 1) % addrSetBuckets // not the low bit: it is always set
	s.slots[b*addrSetWays+uint64(s.next[b])] = h
	s.next[b] = (s.next[b] + 1) % addrSetWays
}

func (s *addrSet) has(a netip.AddrPort) bool {
	if s.slots == nil {
		return false
	}
	h := maphash.Comparable(s.seed, a) | 1
	b := (h >> 1) % addrSetBuckets // not the low bit: it is always set
	for _, v := range s.slots[b*addrSetWays : (b+1)*addrSetWays] {
		if v == h {
			return true
		}
	}
	return false
}
