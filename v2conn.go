package vaultudp

// Protocol v2 on a Conn: peers configured with ProtocolV2 are spoken to,
// and heard from, in the Python reference's format (v2wire.go is the
// codec; ../shared/WIRE-V2.md, cited as §n, the facts), on the same
// socket as native peers. The application does not see the difference:
// WriteTo seals (or queues, or sends in clear, as the policy says) and
// ReadFrom returns the peer's datagrams with its configured address as
// the source.
//
// What v2 is, and is not (the README says it to users): both sides have
// static keys, so there is no forward secrecy; a key exchange is only
// self-signed, so without a pinned key (PeerConfig.PublicKey for the
// reference's sign_key, PeerConfig.BoxKey for its enc_key) the first key
// exchange is trusted (trust on first use, or Config.VerifyPeer); replay
// protection is a timestamp window and a nonce cache, not a counter.
//
// The rules of §12, as a Go peer follows them here:
//
//   - We send from the listening socket and advertise its port in our key
//     exchange, so that the reference files our keys under the tuple our
//     datagrams come from (§12.1).
//   - The reference sends from an ephemeral port (§1.2): its datagrams are
//     routed by source IP (receive.go calls receiveV2 first for an IP with
//     v2 peers), a sealed one is opened with the shared key of each v2
//     peer on that IP in turn, and its key exchanges must name the peer's
//     configured port (v2KeyExchangeMatchesPeer); a key exchange naming
//     another port installs nothing and is not answered (§13e).
//   - Receive order (§11): open, replay check (only after the box opened),
//     frame, control (decode, verify with the fix of §13a, pins and trust,
//     our own keys reflected are ignored), then payload.
//   - Learning its keys (§12.3): a plaintext key exchange from it says it
//     holds none of ours; we answer it at once, in plaintext (at most once
//     a second: plaintext is not replay-protected). Until we know its box
//     key we send no key exchange of our own (the reference would seal its
//     answer with a key we cannot open), unless Config.V2KeyProbe asks it
//     for one (v2SendProbeLocked).
//   - Refresh (§10): our key exchange goes out in plaintext every
//     v2KeyRefreshInterval while the peer holds our keys (a sealed datagram
//     from it proves that), and with a backoff of 1, 2, 4, 8, 15 s until
//     it does; the reference forgets keys 60–90 s after the last exchange.
//   - Sealed datagrams are stamped v2SendTimestamp (30 s in the past),
//     payloads always zstd-compressed, frames padded as the reference pads
//     (or as Config.Padding says), at most the effective MTU unpadded
//     (else ErrMessageTooLarge), and no more than the reference's 100
//     datagrams a second per peer (the excess is counted, not sent).
//   - RequireEncryption: plaintext payloads from a v2 peer are dropped, its
//     plaintext key exchanges are still read (the only way to learn its
//     keys), and datagrams written before its box key is known wait for it
//     (up to v2KeyWait). Opportunistic sends in clear until then, and
//     drops plaintext once the peer was seen sealed. Plaintext never
//     seals and sends no key exchange.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/nacl/box"
)

const (
	// v2KeyWait is how long datagrams written to a RequireEncryption v2
	// peer wait for its box key. The reference sends a plaintext key
	// exchange every 5–20 s while it holds none of our keys (§10): one
	// round and some.
	v2KeyWait = 25 * time.Second

	// v2FirstRetry is the first resend of our key exchange to a peer that
	// has not yet shown it holds our keys; it doubles up to
	// v2KeyRefreshInterval. Probes (Config.V2KeyProbe) follow the same
	// schedule.
	v2FirstRetry = time.Second

	// v2AnswerEvery limits our answers to a peer's plaintext key
	// exchanges: they are not replay-protected, so a replayed one must
	// not make us send more than one key exchange a second.
	v2AnswerEvery = time.Second

	// v2SendWindow and v2SendData keep us under the reference's rate
	// limit (§9: at most 100 datagrams from one source tuple in any
	// trailing second, the excess dropped before decryption): data goes
	// out only while fewer than v2SendData datagrams went to the peer in
	// the last v2SendWindow (a margin for scheduling and transit jitter);
	// key exchanges always go, and count.
	v2SendWindow = 1100 * time.Millisecond
	v2SendData   = v2ReferenceRateLimit - 4
)

// v2Zeros is the padding of sealed frames: inside the box zeros are as
// good as random bytes (§7 uses random ones; receivers ignore g).
var v2Zeros [v2MaxDatagram]byte

// v2State is a Conn's protocol v2 side: its static keys and its v2 peers.
type v2State struct {
	keys  *v2Keys
	probe bool

	n  atomic.Int32            // v2 peers: zero keeps native-only Conns off this path
	z  atomic.Pointer[v2Zstd]  // made with the first v2 peer; nil after close
	kx atomic.Pointer[v2KxMsg] // our key exchange, for the port it names

	warnedPort atomic.Bool

	// mu guards the fields below. Lock order: Conn.mu, then mu.
	mu     sync.RWMutex
	byIP   map[netip.Addr][]*v2Peer // copy on write: readers keep their slice
	byAddr map[netip.AddrPort]*v2Peer
	closed bool
}

// v2KxMsg is our key-exchange JSON (§5.1) advertising port.
type v2KxMsg struct {
	port int
	json []byte
}

// v2Peer is the v2 state of one ProtocolV2 peer.
type v2Peer struct {
	addr    netip.AddrPort // configured: where we send, the port its key exchanges name, ReadFrom's source
	peer    *peer          // its entry in Conn.peers
	policy  Policy         // resolved
	pinSign ed25519.PublicKey
	pinBox  *[32]byte

	shared atomic.Pointer[[32]byte] // the box key shared with it; nil until its box key is known

	// sendMu serialises what goes to the peer (data, key exchanges, the
	// flush of the queue), so that the rate window holds and our key
	// exchange precedes the datagrams sealed for it. Lock order: sendMu,
	// then mu.
	sendMu sync.Mutex
	window v2Window

	// mu guards the fields below. Lock order: the peer's mu, then mu.
	mu        sync.Mutex
	box       *[32]byte         // its enc_key, pinned or learned
	sign      ed25519.PublicKey // its sign_key, pinned or learned (the key trust on first use remembers)
	replay    *v2ReplayCache    // kept across key exchanges and source ports (§13d)
	heard     bool              // a sealed datagram from it opened since its last plaintext key exchange: it holds our keys
	sendPort  uint16            // the source port of its last sealed datagram (its sending socket)
	kxEver    bool
	kxSent    int64 // Conn clock of our last key exchange to it
	kxPort    int   // the port it advertised
	kxRetries int   // key exchanges sent since it last showed it holds our keys
	answered  int64 // Conn clock of our last answer to its plaintext key exchange
	answers   int
	probes    int
	probeSent int64
	queue     []v2Queued
	queuedAt  int64
	lastKx    time.Time // wall clock of the last key exchange accepted from it
	removed   bool
	changed   chan struct{} // closed and replaced when its keys, our key exchange or removal change
}

// v2Queued is a datagram written before the peer's box key was known.
type v2Queued struct {
	payload []byte // zstd-compressed
	n       int    // its length as written
}

// v2Window holds the send times of the last datagrams to a peer.
type v2Window struct {
	t       [v2ReferenceRateLimit]time.Time
	head, n int
}

func (w *v2Window) count(now time.Time) int {
	for w.n > 0 && now.Sub(w.t[w.head]) >= v2SendWindow {
		w.head = (w.head + 1) % len(w.t)
		w.n--
	}
	return w.n
}

func (w *v2Window) add(now time.Time) {
	if w.n == len(w.t) {
		w.head = (w.head + 1) % len(w.t)
		w.n--
	}
	w.t[(w.head+w.n)%len(w.t)] = now
	w.n++
}

// newV2State makes the v2 keys from the Config (Config.V2BoxPrivateKey,
// Config.V2SigningKey, else Identity). Peers come with AddPeer.
func newV2State(cfg *Config) (*v2State, error) {
	sign := cfg.V2SigningKey
	if sign == nil {
		sign = cfg.Identity
	} else if len(sign) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: V2SigningKey of %d bytes, want %d", ErrInvalidConfig, len(sign), ed25519.PrivateKeySize)
	}
	var keys *v2Keys
	switch len(cfg.V2BoxPrivateKey) {
	case 0:
		if cfg.V2BoxPrivateKey != nil {
			return nil, fmt.Errorf("%w: V2BoxPrivateKey of 0 bytes, want 32", ErrInvalidConfig)
		}
		keys = deriveV2Keys(sign)
	case 32:
		var k [32]byte
		copy(k[:], cfg.V2BoxPrivateKey)
		keys = newV2Keys(&k, slices.Clone(sign))
	default:
		return nil, fmt.Errorf("%w: V2BoxPrivateKey of %d bytes, want 32", ErrInvalidConfig, len(cfg.V2BoxPrivateKey))
	}
	return &v2State{
		keys:   keys,
		probe:  cfg.V2KeyProbe,
		byIP:   make(map[netip.Addr][]*v2Peer),
		byAddr: make(map[netip.AddrPort]*v2Peer),
	}, nil
}

// active reports whether the Conn has v2 peers: one atomic load on the
// native paths.
func (s *v2State) active() bool { return s.n.Load() > 0 }

// lookup returns the v2 peer configured at addr (normalised), or nil.
func (s *v2State) lookup(addr netip.AddrPort) *v2Peer {
	if !s.active() {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byAddr[addr]
}

// onIP returns the v2 peers on ip; the caller must not modify the slice.
func (s *v2State) onIP(ip netip.Addr) []*v2Peer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byIP[ip]
}

func (s *v2State) all() []*v2Peer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*v2Peer, 0, len(s.byAddr))
	for _, vp := range s.byAddr {
		out = append(out, vp)
	}
	return out
}

// close releases the zstd codec; called by Conn.Close.
func (s *v2State) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	if z := s.z.Swap(nil); z != nil {
		z.close()
	}
}

// kxJSON returns our key exchange advertising port.
func (s *v2State) kxJSON(port int) []byte {
	if m := s.kx.Load(); m != nil && m.port == port {
		return m.json
	}
	m := &v2KxMsg{port: port, json: appendV2KeyExchange(nil, s.keys.keyExchange(port))}
	s.kx.Store(m)
	return m.json
}

// V2PublicKeys returns the Conn's static protocol v2 public keys: its
// X25519 box key (the enc_key of its key exchanges) and its Ed25519
// signing key (sign_key). The reference shows both as standard base64.
func (c *Conn) V2PublicKeys() (boxKey []byte, signKey ed25519.PublicKey) {
	k := c.v2.keys
	return slices.Clone(k.boxPublic[:]), slices.Clone(k.sign.Public().(ed25519.PublicKey))
}

// v2LocalPort is the port we listen on, the one our key exchanges name.
func (c *Conn) v2LocalPort() int {
	if ua, ok := c.sock.Load().laddr.(*net.UDPAddr); ok {
		return ua.Port
	}
	return 0
}

// v2AddLocked makes p, just made by AddPeer, a v2 peer; Conn.mu is held.
func (c *Conn) v2AddLocked(p *peer, pc *PeerConfig) error {
	s := c.v2
	vp := &v2Peer{
		addr:    p.addr,
		peer:    p,
		policy:  p.policy,
		pinSign: slices.Clone(pc.PublicKey),
		replay:  newV2PeerReplayCache(v2ReplayCapacity, c.cfg.now()),
		changed: make(chan struct{}),
	}
	vp.sign = vp.pinSign
	if pc.BoxKey != nil {
		var k [32]byte
		copy(k[:], pc.BoxKey)
		shared, err := s.keys.sharedKey(&k)
		if err != nil {
			return fmt.Errorf("%w: peer %v: BoxKey: %v", ErrInvalidConfig, p.addr, err)
		}
		vp.pinBox, vp.box = &k, &k
		vp.shared.Store(shared)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return c.opError("add peer", nil, ErrClosed)
	}
	if s.z.Load() == nil {
		z, err := newV2Zstd()
		if err != nil {
			return err
		}
		s.z.Store(z)
	}
	s.byAddr[vp.addr] = vp
	ip := vp.addr.Addr()
	s.byIP[ip] = append(slices.Clip(s.byIP[ip]), vp)
	s.n.Add(1)
	p.v2 = vp
	if port := c.v2LocalPort(); port != v2ReferenceClampPort(port) && !s.warnedPort.Swap(true) {
		c.log.Warn("vaultudp: listening port outside [1500, 65000]: a py-vault-udp application cannot add this Conn as a peer (it would use the nearest bound)", "port", port)
	}
	return nil
}

// v2Remove forgets a v2 peer removed by RemovePeer.
func (c *Conn) v2Remove(vp *v2Peer) {
	s := c.v2
	s.mu.Lock()
	if s.byAddr[vp.addr] == vp {
		delete(s.byAddr, vp.addr)
		ip := vp.addr.Addr()
		rest := slices.DeleteFunc(slices.Clone(s.byIP[ip]), func(q *v2Peer) bool { return q == vp })
		if len(rest) == 0 {
			delete(s.byIP, ip)
		} else {
			s.byIP[ip] = rest
		}
		s.n.Add(-1)
	}
	s.mu.Unlock()
	vp.mu.Lock()
	if !vp.removed {
		vp.removed = true
		c.stats.dropHandshakeTimeout.Add(uint64(len(vp.queue)))
		vp.queue = nil
		vp.notifyLocked()
	}
	vp.mu.Unlock()
}

func (vp *v2Peer) notifyLocked() {
	close(vp.changed)
	vp.changed = make(chan struct{})
}

// info fills in the v2 side of a PeerInfo: Established once we know its
// box key and it has shown it holds ours.
func (vp *v2Peer) info(pi *PeerInfo) {
	vp.mu.Lock()
	defer vp.mu.Unlock()
	pi.Protocol = ProtocolV2
	pi.PublicKey = slices.Clone(vp.sign)
	pi.Established = vp.box != nil && vp.heard
	pi.LastHandshake = vp.lastKx
}

// v2Start sends what AddPeer sends: our key exchange when the peer's box
// key is pinned, else a probe if Config.V2KeyProbe asks for one, else
// nothing (we wait for its plaintext key exchange).
func (c *Conn) v2Start(vp *v2Peer) {
	if vp.policy == Plaintext {
		return
	}
	vp.sendMu.Lock()
	defer vp.sendMu.Unlock()
	vp.mu.Lock()
	known := vp.box != nil
	vp.mu.Unlock()
	switch {
	case known:
		c.v2SendKxLocked(vp)
	case c.v2.probe:
		c.v2SendProbeLocked(vp)
	}
}

// v2Handshake is Handshake for a v2 peer: it waits until the peer's box
// key is known and our key exchange has gone out, so that writes are
// sealed. Without a pinned BoxKey that takes up to one of the
// reference's rounds (5–20 s) unless Config.V2KeyProbe is set; it ends
// with ctx, not with Config.HandshakeTimeout.
func (c *Conn) v2Handshake(ctx context.Context, vp *v2Peer) error {
	if vp.policy == Plaintext {
		return fmt.Errorf("%w: %v: policy is plaintext", ErrNoSession, vp.addr)
	}
	for {
		vp.mu.Lock()
		if vp.removed {
			vp.mu.Unlock()
			return fmt.Errorf("%w: %v was removed", ErrUnknownPeer, vp.addr)
		}
		if vp.box != nil && vp.kxEver {
			vp.mu.Unlock()
			return nil
		}
		ch := vp.changed
		vp.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return c.opError("handshake", nil, ErrClosed)
		}
	}
}

// v2Backoff is the n-th retry interval (n >= 1): 1, 2, 4, 8, 15, 15 ... s.
func v2Backoff(n int) time.Duration {
	return min(v2FirstRetry<<min(max(n-1, 0), 4), v2KeyRefreshInterval)
}

// v2Tick runs from the Conn's housekeeping: key exchanges that are due,
// probes, and the expiry of datagrams waiting for a box key.
func (c *Conn) v2Tick(now int64) {
	if !c.v2.active() {
		return
	}
	port := c.v2LocalPort()
	for _, vp := range c.v2.all() {
		vp.mu.Lock()
		if vp.removed {
			vp.mu.Unlock()
			continue
		}
		if len(vp.queue) > 0 && time.Duration(now-vp.queuedAt) >= v2KeyWait {
			c.stats.dropHandshakeTimeout.Add(uint64(len(vp.queue)))
			vp.queue = nil
		}
		var kx, probe bool
		if vp.policy != Plaintext {
			switch {
			case vp.box != nil:
				interval := v2KeyRefreshInterval
				if !vp.heard {
					interval = v2Backoff(vp.kxRetries)
				}
				kx = !vp.kxEver || vp.kxPort != port || time.Duration(now-vp.kxSent) >= interval
			case c.v2.probe:
				probe = vp.probes == 0 || time.Duration(now-vp.probeSent) >= v2Backoff(vp.probes)
			}
		}
		vp.mu.Unlock()
		// TryLock: housekeeping never waits behind a writer (one blocked
		// on a full socket buffer, say); the next tick tries again.
		if (kx || probe) && vp.sendMu.TryLock() {
			if kx {
				c.v2SendKxLocked(vp)
			} else {
				c.v2SendProbeLocked(vp)
			}
			vp.sendMu.Unlock()
		}
	}
}

// v2SendKxLocked sends our key exchange to vp, in plaintext (§12.3: the
// first one must be, and a refresh in plaintext also reaches a reference
// that has forgotten our keys); vp.sendMu is held.
func (c *Conn) v2SendKxLocked(vp *v2Peer) {
	port := c.v2LocalPort()
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	frame := appendV2Frame((*bp)[:0], nil, c.v2.kxJSON(port), nil)
	if _, err := c.v2WriteLocked(vp, frame, true); err != nil {
		c.log.Debug("vaultudp: sending v2 key exchange", "peer", vp.addr, "err", err)
	}
	vp.mu.Lock()
	first := !vp.kxEver
	vp.kxEver, vp.kxSent, vp.kxPort = true, c.now(), port
	if !vp.heard {
		vp.kxRetries++
	}
	if first {
		vp.notifyLocked()
	}
	vp.mu.Unlock()
}

// v2SendProbeLocked sends a key probe (appendV2KeyProbe): a key exchange
// with our real sign_key and port but an enc_key the reference cannot
// seal with, unsigned. A reference holding no keys for us stores it and
// answers at once with its own key exchange, in plaintext because
// sealing with that key fails (§11, §13h): we learn its keys in one round
// trip and answer with our real key exchange, which overwrites the
// unusable one. The cost: a reference that already held our keys (this
// Conn restarted with the same identity, say) overwrites them with the
// probe's, answers nothing, and sends to us in plaintext, readable by an
// eavesdropper, until its next periodic key exchange (5–20 s) lets us
// answer. Hence opt-in (Config.V2KeyProbe). vp.sendMu is held.
func (c *Conn) v2SendProbeLocked(vp *v2Peer) {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	ctl := appendV2KeyProbe(nil, c.v2.keys.signKey, c.v2LocalPort())
	frame := appendV2Frame((*bp)[:0], nil, ctl, nil)
	if _, err := c.v2WriteLocked(vp, frame, true); err != nil {
		c.log.Debug("vaultudp: sending v2 key probe", "peer", vp.addr, "err", err)
	}
	vp.mu.Lock()
	vp.probes++
	vp.probeSent = c.now()
	vp.mu.Unlock()
}

// v2WriteLocked sends one datagram to vp from the listening socket, within
// the reference's rate limit: data over it is counted and not sent
// (sent false); control always goes. vp.sendMu is held.
func (c *Conn) v2WriteLocked(vp *v2Peer, datagram []byte, control bool) (sent bool, err error) {
	now := time.Now()
	if !control && vp.window.count(now) >= v2SendData {
		c.stats.v2SendLimit.Add(1)
		return false, nil
	}
	vp.window.add(now)
	if err := c.sock.Load().writeTo(datagram, vp.addr); err != nil {
		return false, err
	}
	return true, nil
}

// v2MaxIncompressible is the largest payload that fits a frame of at most
// eff bytes when zstd cannot shrink it: a single-segment frame of one raw
// block (4 magic, 1 descriptor, 1 or 2 content size, 3 block header).
// Compressible payloads may be larger.
func v2MaxIncompressible(eff int) int {
	for n := eff; n > 0; n-- {
		fcs := 1
		if n >= 256 {
			fcs = 2
		}
		if v2FrameLen(4+1+fcs+3+n, 0, 0) <= eff {
			return n
		}
	}
	return 0
}

// v2PadLenFor is the length of g for a sealed frame whose unpadded length
// is natural (at most eff): PadMTU pads as the reference does (v2PadLen),
// PadNone not at all, PadBlock(n) so that the sealed datagram is a
// multiple of n bytes (never past the reference's size; one byte short
// where g's header grows).
func v2PadLenFor(p Padding, eff, natural int) int {
	switch {
	case p == PadMTU:
		return eff - natural
	case p <= 0:
		return 0
	}
	b := int(p)
	wire := min((natural+v2SealOverhead+b-1)/b*b, eff+v2SealOverhead)
	d := wire - v2SealOverhead - natural
	switch {
	case d <= 0:
		return 0
	case d <= 255:
		return d
	case d == 256:
		return 255
	}
	return d - 1
}

// appendV2Datagram appends a datagram carrying payload (compressed) and
// control: sealed under shared and padded per Config.Padding, or, with a
// nil shared, a plaintext frame, unpadded (nothing to hide). The
// unpadded frame must fit the reference's effective MTU (§7).
func (c *Conn) appendV2Datagram(dst []byte, shared *[32]byte, payload, control []byte) ([]byte, error) {
	eff := v2EffectiveMTU(c.mtu)
	natural := v2FrameLen(len(payload), len(control), 0)
	if natural > eff {
		return dst, fmt.Errorf("%w: %d bytes (MTU: %d)", errV2TooLarge, natural, eff)
	}
	if shared == nil {
		return appendV2Frame(dst, payload, control, nil), nil
	}
	pad := v2PadLenFor(c.cfg.Padding, eff, natural)
	var nonces [v2BoxNonceLen + v2InnerNonceLen]byte
	rand.Read(nonces[:])
	boxNonce := (*[v2BoxNonceLen]byte)(nonces[:v2BoxNonceLen])
	inner := (*[v2InnerNonceLen]byte)(nonces[v2BoxNonceLen:])
	pp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(pp)
	plain := appendV2InnerPrefix((*pp)[:0], inner, v2SendTimestamp(c.cfg.now()))
	plain = appendV2Frame(plain, payload, control, v2Zeros[:pad])
	dst = append(dst, boxNonce[:]...)
	return box.SealAfterPrecomputation(dst, plain, boxNonce, shared), nil
}

// sendV2 is the write path to a v2 peer (send calls it first).
func (c *Conn) sendV2(vp *v2Peer, b []byte) error {
	if len(b) > c.maxPayload { // the native rule: ReadFrom at a native peer would cut more
		c.stats.tooLarge.Add(1)
		return &tooLargeError{n: len(b), max: c.maxPayload}
	}
	z := c.v2.z.Load()
	if z == nil {
		return ErrClosed
	}
	zp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(zp)
	payload := z.compress((*zp)[:0], b) // always, even empty: the reference expects zstd (§4)
	eff := v2EffectiveMTU(c.mtu)
	if v2FrameLen(len(payload), 0, 0) > eff {
		c.stats.tooLarge.Add(1)
		return &tooLargeError{n: len(b), max: v2MaxIncompressible(eff)}
	}
	vp.sendMu.Lock()
	defer vp.sendMu.Unlock()
	vp.mu.Lock()
	if vp.removed {
		vp.mu.Unlock()
		return fmt.Errorf("%w: %v was removed", ErrUnknownPeer, vp.addr)
	}
	shared := vp.shared.Load()
	if vp.policy == Plaintext {
		shared = nil
	}
	if shared == nil && vp.policy == RequireEncryption {
		defer vp.mu.Unlock()
		if len(vp.queue) >= maxQueued {
			return fmt.Errorf("%w: %v: its v2 key is not known yet and %d datagrams already wait for it", ErrNoSession, vp.addr, maxQueued)
		}
		if len(vp.queue) == 0 {
			vp.queuedAt = c.now()
		}
		vp.queue = append(vp.queue, v2Queued{payload: bytes.Clone(payload), n: len(b)})
		return nil
	}
	vp.mu.Unlock()
	return c.v2SendPayloadLocked(vp, shared, payload, len(b))
}

// v2SendPayloadLocked sends a compressed payload of a datagram of n bytes
// to vp; vp.sendMu is held.
func (c *Conn) v2SendPayloadLocked(vp *v2Peer, shared *[32]byte, payload []byte, n int) error {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	dg, err := c.appendV2Datagram((*bp)[:0], shared, payload, nil)
	if err != nil {
		return err
	}
	sent, err := c.v2WriteLocked(vp, dg, false)
	if err != nil {
		return err
	}
	if sent {
		c.stats.datagramsOut.Add(1)
		c.stats.bytesOut.Add(uint64(n))
	}
	return nil
}

// v2FlushLocked sends the datagrams that waited for vp's box key;
// vp.sendMu is held.
func (c *Conn) v2FlushLocked(vp *v2Peer) {
	vp.mu.Lock()
	shared := vp.shared.Load()
	if shared == nil || len(vp.queue) == 0 {
		vp.mu.Unlock()
		return
	}
	q := vp.queue
	vp.queue = nil
	vp.mu.Unlock()
	for _, e := range q {
		if err := c.v2SendPayloadLocked(vp, shared, e.payload, e.n); err != nil {
			c.log.Debug("vaultudp: sending queued v2 datagram", "peer", vp.addr, "err", err)
		}
	}
}

// notNativeAddr reports whether datagrams from addr are not native
// whatever they look like: addr is a ProtocolV2 peer's configured address,
// which speaks v2 only (a native hello from there must not make a native
// session for a v2 peer). One atomic load while the Conn has no v2 peers.
func (c *Conn) notNativeAddr(addr netip.AddrPort) bool {
	return c.v2.lookup(addr) != nil
}

// notNative takes a datagram the native checks refused before trying to
// authenticate it (no native header, a session index we do not have, an
// open envelope that does not parse): it is a v2 datagram if protocol v2
// takes it, else drop counts it. It never keeps p.
//
// What tells a v2 datagram from a native one (WIRE-V2.md §2): none has a
// version byte. A native datagram starts with ProtocolVersion and its
// type; a plaintext v2 datagram with a msgpack map header (0x80–0x8f,
// 0xde, 0xdf), so it never looks native; a sealed v2 datagram with a
// random box nonce, so about one in 32768 of them starts like a native
// one, and the native checks then refuse it (a sealed header with an
// unknown session index, an unparsable envelope) before handing it here.
// The one v2 datagram lost: a box nonce that starts with a sealed header
// and the index of a live native session (a chance of about 2^-64 per
// session): its tag fails and the native open, which decrypts in place,
// has overwritten it (counted as Auth).
func (c *Conn) notNative(p *packet, drop *atomic.Uint64) bool {
	if !c.v2.active() || !c.receiveV2(p) {
		drop.Add(1)
	}
	return false
}

// receiveV2 handles a datagram from the IP of v2 peers that is not
// native. It returns false, counting nothing, when it is not a v2
// datagram either.
func (c *Conn) receiveV2(p *packet) bool {
	if p.truncated {
		return false
	}
	src := p.from
	peers := c.v2.onIP(src.Addr())
	if len(peers) == 0 {
		return false
	}
	b := p.data
	if len(b) >= v2BoxOverhead+v2InnerLen {
		bp := c.bufs.Get().(*[]byte)
		defer c.bufs.Put(bp)
		for _, vp := range peers {
			shared := vp.shared.Load()
			if shared == nil {
				continue
			}
			if in, err := openV2((*bp)[:0], shared, b); err == nil {
				c.receiveV2Sealed(src, vp, &in)
				return true
			}
		}
	}
	f, err := decodeV2Frame(b)
	if err != nil {
		return false
	}
	c.receiveV2Plain(src, peers, &f)
	return true
}

// receiveV2Sealed handles a datagram that opened with vp's key (§11).
func (c *Conn) receiveV2Sealed(src netip.AddrPort, vp *v2Peer, in *v2Inner) {
	vp.mu.Lock()
	if vp.removed {
		vp.mu.Unlock()
		return
	}
	if err := vp.replay.check(&in.nonce, in.ts, c.cfg.now()); err != nil {
		vp.mu.Unlock()
		c.stats.replay.Add(1)
		return
	}
	// It sealed with our key, so it holds our keys.
	if !vp.heard {
		vp.heard = true
		vp.notifyLocked()
	}
	vp.kxRetries = 0
	vp.sendPort = src.Port()
	vp.mu.Unlock()
	vp.peer.seenSealed.Store(true)
	f, err := decodeV2Frame(in.frame)
	if err != nil {
		c.stats.malformed.Add(1) // authentic but malformed: a peer's bug
		return
	}
	if f.control != nil && c.v2KeyExchange(src, nil, vp, f.control) == nil {
		return // a bad control channel drops the datagram, as the reference does
	}
	if f.payload != nil {
		c.v2Deliver(vp, f.payload)
	}
}

// receiveV2Plain handles a plaintext frame from src, whose IP has peers.
func (c *Conn) receiveV2Plain(src netip.AddrPort, peers []*v2Peer, f *v2Frame) {
	var vp *v2Peer
	if f.control != nil {
		if vp = c.v2KeyExchange(src, peers, nil, f.control); vp == nil {
			return
		}
	}
	if f.payload == nil {
		return
	}
	if vp == nil {
		vp = v2Attribute(src, peers)
	}
	if vp == nil {
		c.stats.policy.Add(1) // plaintext that cannot be told apart between peers
		return
	}
	switch vp.policy {
	case RequireEncryption:
		c.stats.policy.Add(1)
		return
	case Opportunistic:
		if vp.peer.seenSealed.Load() {
			c.stats.policy.Add(1) // a downgrade: this peer has spoken sealed
			return
		}
	}
	c.v2Deliver(vp, f.payload)
}

// v2Attribute picks the peer a plaintext payload from src belongs to: the
// one at src, else the one whose sealed datagrams come from src, else the
// only v2 peer on src's IP.
func v2Attribute(src netip.AddrPort, peers []*v2Peer) *v2Peer {
	for _, vp := range peers {
		if vp.addr == src {
			return vp
		}
	}
	for _, vp := range peers {
		vp.mu.Lock()
		from := vp.sendPort == src.Port()
		vp.mu.Unlock()
		if from {
			return vp
		}
	}
	if len(peers) == 1 {
		return peers[0]
	}
	return nil
}

// v2KeyExchange handles a control channel from src (§5.2, with our
// fixes). For a sealed datagram, from is the peer whose key opened it and
// the key exchange must be its own; for a plaintext one, it is for the
// peer on src's IP whose port it names (the reference sends from an
// ephemeral port, §12.2). It returns the peer whose keys it carried, or
// nil when it was refused (the caller then drops the datagram).
func (c *Conn) v2KeyExchange(src netip.AddrPort, peers []*v2Peer, from *v2Peer, ctl []byte) *v2Peer {
	kx, err := decodeV2KeyExchange(ctl)
	if err != nil {
		c.stats.malformed.Add(1)
		return nil
	}
	var vp *v2Peer
	if from != nil {
		if v2KeyExchangeMatchesPeer(src, &kx, from.addr) {
			vp = from
		}
	} else {
		for _, q := range peers {
			if v2KeyExchangeMatchesPeer(src, &kx, q.addr) {
				vp = q
				break
			}
		}
	}
	if vp == nil {
		// It names a port that is not the peer's (§13e): it installs
		// nothing and gets no answer (the reference would answer there).
		c.stats.rejected.Add(1)
		return nil
	}
	if kx.encKey == c.v2.keys.encKey || kx.signKey == c.v2.keys.signKey {
		c.stats.auth.Add(1) // our own key exchange, reflected
		return nil
	}
	k, err := verifyV2KeyExchange(&kx)
	if err != nil {
		c.stats.auth.Add(1)
		return nil
	}
	if err := c.v2Trust(vp, &k); err != nil {
		c.stats.rejected.Add(1)
		c.log.Info("vaultudp: v2 key exchange refused", "peer", vp.addr, "err", err)
		return nil
	}
	if from != nil {
		// Sealed: it holds our keys; a refresh, or a new box key signed
		// by the key we trust.
		if !c.v2Install(vp, &k) {
			return nil
		}
		return vp
	}
	// Plaintext: the reference sends those only while it holds none of
	// our keys (§10): answer with ours, in plaintext, then send what
	// waited for its key. sendMu first, so that nothing sealed for it
	// goes out before our key exchange.
	vp.sendMu.Lock()
	defer vp.sendMu.Unlock()
	if !c.v2Install(vp, &k) {
		return nil
	}
	now := c.now()
	vp.mu.Lock()
	vp.heard = false
	answer := vp.policy != Plaintext && (vp.answers == 0 || time.Duration(now-vp.answered) >= v2AnswerEvery)
	if answer {
		vp.answers++
		vp.answered = now
	}
	vp.mu.Unlock()
	if answer {
		c.v2SendKxLocked(vp)
	}
	c.v2FlushLocked(vp)
	return vp
}

// v2Trust applies the trust rules to the verified keys of a key exchange
// for vp: pinned keys must match (a pinned BoxKey alone lets any sign_key
// sign it: the box key is what protects the traffic); unpinned, a
// Config.VerifyPeer decides, else the first sign_key accepted is the only
// one accepted until the peer is removed (trust on first use; a new box
// key signed by it is a legitimate change).
func (c *Conn) v2Trust(vp *v2Peer, k *v2PeerKeys) error {
	vp.mu.Lock()
	known := vp.sign
	vp.mu.Unlock()
	switch {
	case vp.pinSign != nil && !bytes.Equal(vp.pinSign, k.sign):
		return fmt.Errorf("%w: %v presented sign_key %s, pinned key is %s", ErrPeerRejected, vp.addr, v2B64.EncodeToString(k.sign), v2B64.EncodeToString(vp.pinSign))
	case vp.pinBox != nil && *vp.pinBox != k.box:
		return fmt.Errorf("%w: %v presented enc_key %s, pinned BoxKey is %s", ErrPeerRejected, vp.addr, v2B64.EncodeToString(k.box[:]), v2B64.EncodeToString(vp.pinBox[:]))
	case vp.pinSign != nil || vp.pinBox != nil:
	case c.cfg.VerifyPeer != nil:
		if err := c.cfg.VerifyPeer(vp.addr, slices.Clone(k.sign)); err != nil {
			return fmt.Errorf("%w: %v: %w", ErrPeerRejected, vp.addr, err)
		}
	case known != nil && !bytes.Equal(known, k.sign):
		return fmt.Errorf("%w: %v presented sign_key %s, but it used %s before (trust on first use)", ErrPeerRejected, vp.addr, v2B64.EncodeToString(k.sign), v2B64.EncodeToString(known))
	}
	return nil
}

// v2Install stores the keys of an accepted key exchange.
func (c *Conn) v2Install(vp *v2Peer, k *v2PeerKeys) bool {
	vp.mu.Lock()
	defer vp.mu.Unlock()
	if vp.removed {
		return false
	}
	if vp.box == nil || *vp.box != k.box {
		shared, err := c.v2.keys.sharedKey(&k.box)
		if err != nil {
			c.stats.auth.Add(1)
			return false
		}
		changed := vp.box != nil
		b := k.box
		vp.box = &b
		vp.shared.Store(shared)
		vp.notifyLocked()
		c.log.Debug("vaultudp: v2 box key learned", "peer", vp.addr, "changed", changed)
	}
	vp.sign = slices.Clone(k.sign)
	vp.lastKx = c.cfg.now()
	c.stats.v2KeyExchanges.Add(1)
	return true
}

// v2Deliver decompresses a payload from vp and queues it for ReadFrom,
// with vp's configured address as the source. Any bytes are delivered
// (the reference would deliver only UTF-8), up to MaxPayload after
// decompression, as from a native peer: a larger payload is dropped and
// counted as TooLarge.
func (c *Conn) v2Deliver(vp *v2Peer, payload []byte) {
	if l := vp.peer.limiter; l != nil && !l.Allow() {
		c.stats.rateLimit.Add(1)
		return
	}
	q := c.getPacket()
	out, err := c.z.decompress(q.buf, payload) // bounded by MaxPayload
	if err != nil {
		c.putPacket(q)
		if errors.Is(err, errTooLarge) {
			c.stats.tooLarge.Add(1)
		} else {
			c.stats.malformed.Add(1)
		}
		return
	}
	q.data, q.from = out, vp.addr
	n := uint64(len(out))
	c.stats.datagramsIn.Add(1)
	c.stats.bytesIn.Add(n)
	select {
	case c.recvQ <- q:
	default:
		c.stats.datagramsIn.Add(^uint64(0))
		c.stats.bytesIn.Add(-n)
		c.stats.queueFull.Add(1)
		c.putPacket(q)
	}
}
