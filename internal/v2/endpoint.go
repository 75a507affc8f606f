package v2

// The Endpoint: protocol v2 on a Conn. Peers configured with ProtocolV2
// are spoken to, and heard from, in the Python reference's format
// (wire.go is the codec; docs/WIRE-V2.md, cited as §n, the facts),
// on the same socket as native peers; the Conn reaches them through the
// callbacks of Config and the methods of Endpoint and Peer
// (proto_v2.go in the root package is the glue).
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
//     routed by source IP (the Conn calls Receive for what the native
//     checks refuse, from an IP with v2 peers), a sealed one is opened
//     with the shared key of each v2
//     peer on that IP in turn, and its key exchanges must name the peer's
//     configured port (keyExchangeMatchesPeer); a key exchange naming
//     another port installs nothing and is not answered (§13e).
//   - Receive order (§11): open, replay check (only after the box opened),
//     frame, control (decode, verify with the fix of §13a, pins and trust,
//     our own keys reflected are ignored), then payload.
//   - Learning its keys (§12.3): a plaintext key exchange from it says it
//     holds none of ours; we answer it at once, in plaintext (at most once
//     a second: plaintext is not replay-protected). Until we know its box
//     key we send no key exchange of our own (the reference would seal its
//     answer with a key we cannot open), unless Config.Probe asks it
//     for one (sendProbeLocked).
//   - Refresh (§10): our key exchange goes out in plaintext every
//     KeyRefreshInterval while the peer holds our keys (a sealed datagram
//     from it proves that), and with a backoff of 1, 2, 4, 8, 15 s until
//     it does; the reference forgets keys 60–90 s after the last exchange.
//   - Sealed datagrams are stamped sendTimestamp (30 s in the past),
//     payloads always zstd-compressed, frames padded as the reference pads
//     (or as Config.Padding says), at most the effective MTU unpadded
//     (else a TooLargeError), and no more than the reference's 100
//     datagrams a second per peer (the excess is counted, not sent).
//   - RequireEncryption: plaintext payloads from a v2 peer are dropped, its
//     plaintext key exchanges are still read (the only way to learn its
//     keys), and datagrams written before its box key is known wait for it
//     (up to KeyWait). Opportunistic sends in clear until then, and
//     drops plaintext once the peer was seen sealed. Plaintext never
//     seals and sends no key exchange.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vaultudp/vaultudp/internal/zstd"
	"golang.org/x/time/rate"
)

const (
	// KeyWait is how long datagrams written to a RequireEncryption v2
	// peer wait for its box key. The reference sends a plaintext key
	// exchange every 5–20 s while it holds none of our keys (§10): one
	// round and some.
	KeyWait = 25 * time.Second

	// FirstRetry is the first resend of our key exchange to a peer that
	// has not yet shown it holds our keys; it doubles up to
	// KeyRefreshInterval. Probes (Config.Probe) follow the same
	// schedule.
	FirstRetry = time.Second

	// answerEvery limits our answers to a peer's plaintext key
	// exchanges: they are not replay-protected, so a replayed one must
	// not make us send more than one key exchange a second.
	answerEvery = time.Second

	// sendWindow and SendData keep us under the reference's rate
	// limit (§9: at most 100 datagrams from one source tuple in any
	// trailing second, the excess dropped before decryption): data goes
	// out only while fewer than SendData datagrams went to the peer in
	// the last sendWindow (a margin for scheduling and transit jitter);
	// key exchanges always go, and count.
	sendWindow = 1100 * time.Millisecond
	SendData   = ReferenceRateLimit - 4
)

// zeros is the padding of sealed frames: inside the box zeros are as
// good as random bytes (§7 uses random ones; receivers ignore g).
var zeros [MaxDatagram]byte

// Policy is a v2 peer's policy, as the Conn's Policy says it.
type Policy int

// Policies.
const (
	RequireEncryption Policy = iota
	Opportunistic
	Plaintext
)

// Errors of the write and wait paths; the Conn wraps them in its own.
var (
	// ErrRemoved: the peer was removed.
	ErrRemoved = errors.New("v2 peer removed")
	// ErrNoKey: Handshake on a peer whose policy is Plaintext.
	ErrNoKey = errors.New("no v2 key for the peer")
	// ErrRejected: the trust rules refuse a key exchange.
	ErrRejected = errors.New("v2 peer rejected")
	// ErrConfig: a key in the configuration is not usable.
	ErrConfig = errors.New("invalid v2 key")
)

// TooLargeError is the error of a datagram whose compressed frame does
// not fit the reference's effective MTU (§7): Max is the largest
// incompressible payload that fits.
type TooLargeError struct{ N, Max int }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("vaultudp: v2 frame of a %d-byte payload larger than the effective MTU (incompressible payloads fit up to %d bytes)", e.N, e.Max)
}

// Counters are the Conn's counters protocol v2 adds to.
type Counters struct {
	Malformed, Replay, Auth, Policy, Rejected, TooLarge *atomic.Uint64
	Expired                                             *atomic.Uint64 // written datagrams dropped: their wait for a box key ended
	DatagramsOut, BytesOut                              *atomic.Uint64
}

// Config is what an Endpoint needs from its Conn.
type Config struct {
	// BoxPrivateKey is our X25519 private key (the reference's
	// enc_private); nil: derived from SigningKey (DeriveKeys).
	BoxPrivateKey []byte
	SigningKey    ed25519.PrivateKey // our Ed25519 key
	Probe         bool               // Config.Probe
	Padding       int                // 0: to the MTU, -1: none, n > 0: a multiple of n bytes
	MTU           int                // the host MTU (§7)
	MaxPayload    int                // the largest payload written
	BufSize       int                // the size of scratch buffers: at least the largest datagram

	Write      func(b []byte, to netip.AddrPort) error                // sends from the listening socket
	LocalPort  func() int                                             // the listening port
	Clock      func() int64                                           // coarse monotonic nanoseconds
	Now        func() time.Time                                       // the wall clock
	VerifyPeer func(addr netip.AddrPort, key ed25519.PublicKey) error // Config.VerifyPeer, or nil
	Log        *slog.Logger
	Counters   Counters

	// Defer, if set, takes a plaintext datagram from src that carries a
	// key exchange, copying b, for ReceiveDeferred to handle later, off
	// the reader (a bounded queue: it reports false, and counts, when it
	// drops it). A plaintext key exchange costs a signature check and the
	// VerifyPeer callback, and anyone can send one from a v2 peer's IP.
	// nil: Receive handles it at once.
	Defer func(src netip.AddrPort, b []byte) bool
}

// scanRate and scanBurst bound the sealed datagrams a second that Receive
// tries with the keys of every v2 peer on their source's IP (see Receive).
const (
	scanRate  = 50
	scanBurst = 20
)

// Endpoint is a Conn's protocol v2 side: its static keys and its v2
// peers. All methods are safe for concurrent use.
type Endpoint struct {
	cfg Config
	cnt Counters
	log *slog.Logger
	// keys makes the static keys on first use: the X25519 public key
	// costs a scalar multiplication, which a Conn with no v2 peer (most)
	// should not pay when it starts.
	keys  func() *Keys
	probe bool
	bufs  sync.Pool // *[]byte of cfg.BufSize

	n  atomic.Int32                 // v2 peers: zero keeps native-only Conns off this path
	z  atomic.Pointer[zstd.Encoder] // made with the first v2 peer; nil after close
	kx atomic.Pointer[kxMsg]        // our key exchange, for the port it names

	keyExchanges, sendLimited atomic.Uint64 // Stats().V2KeyExchanges and Drops.V2SendLimit
	trials                    atomic.Uint64 // box opens tried on received datagrams (Trials)
	scan                      *rate.Limiter // full trial scans (Receive)

	warnedPort atomic.Bool

	// mu guards the fields below. Lock order: Conn.mu, then mu.
	mu     sync.RWMutex
	byIP   map[netip.Addr][]*Peer // copy on write: readers keep their slice
	byAddr map[netip.AddrPort]*Peer
	closed bool
}

// kxMsg is our key-exchange JSON (§5.1) advertising port.
type kxMsg struct {
	port int
	json []byte
}

// Peer is the v2 state of one ProtocolV2 peer.
type Peer struct {
	e       *Endpoint
	addr    netip.AddrPort // configured: where we send, the port its key exchanges name, ReadFrom's source
	policy  Policy
	pinSign ed25519.PublicKey
	pinBox  *[32]byte
	out     [2]*atomic.Uint64 // PeerConfig.DatagramsOut, BytesOut
	q       Queue

	shared     atomic.Pointer[[32]byte] // the box key shared with it; nil until its box key is known
	seenSealed atomic.Bool              // a sealed datagram from it opened: plaintext from it is a downgrade

	// sendMu serialises what goes to the peer (data, key exchanges, the
	// flush of the queue), so that the rate window holds and our key
	// exchange precedes the datagrams sealed for it. Lock order: sendMu,
	// then mu.
	sendMu sync.Mutex
	window rateWindow

	// mu guards the fields below. Lock order: the Conn's peer lock, then mu.
	mu        sync.Mutex
	box       *[32]byte         // its enc_key, pinned or learned
	sign      ed25519.PublicKey // its sign_key, pinned or learned (the key trust on first use remembers)
	replay    *replayCache      // kept across key exchanges and source ports (§13d)
	heard     bool              // a sealed datagram from it opened since its last plaintext key exchange: it holds our keys
	sendPort  uint16            // the source port of its last sealed datagram (its sending socket)
	kxFrom    uint16            // the source port of its last accepted plaintext key exchange (Receive's order only)
	kxEver    bool
	kxSent    int64 // Clock of our last key exchange to it
	kxPort    int   // the port it advertised
	kxRetries int   // key exchanges sent since it last showed it holds our keys
	answered  int64 // Clock of our last answer to its plaintext key exchange
	answers   int
	probes    int
	probeSent int64
	waiting   bool      // datagrams were queued since the queue was last taken
	queuedAt  int64     // Clock when waiting began
	lastKx    time.Time // wall clock of the last key exchange accepted from it
	removed   bool
	changed   chan struct{} // closed and replaced when its keys, our key exchange or removal change
}

// Queue is where the datagrams written to a RequireEncryption peer wait
// for its box key: the Conn's write queue, under its bounds. Its methods
// are never called with the peer's state lock held.
type Queue interface {
	// Push keeps a copy of b, or reports false when the queue is full
	// (and counts that).
	Push(b []byte) bool
	// Take empties the queue and returns what was in it.
	Take() [][]byte
}

// rateWindow holds the send times of the last datagrams to a peer.
type rateWindow struct {
	t       [ReferenceRateLimit]time.Time
	head, n int
}

func (w *rateWindow) count(now time.Time) int {
	for w.n > 0 && now.Sub(w.t[w.head]) >= sendWindow {
		w.head = (w.head + 1) % len(w.t)
		w.n--
	}
	return w.n
}

func (w *rateWindow) add(now time.Time) {
	if w.n == len(w.t) {
		w.head = (w.head + 1) % len(w.t)
		w.n--
	}
	w.t[(w.head+w.n)%len(w.t)] = now
	w.n++
}

// New makes the v2 side with its keys: cfg.BoxPrivateKey and
// cfg.SigningKey, or both derived from cfg.SigningKey, when first needed.
// Peers come with AddPeer.
func New(cfg Config) (*Endpoint, error) {
	if len(cfg.SigningKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: signing key of %d bytes, want %d", ErrConfig, len(cfg.SigningKey), ed25519.PrivateKeySize)
	}
	var keys func() *Keys
	switch len(cfg.BoxPrivateKey) {
	case 0:
		if cfg.BoxPrivateKey != nil {
			return nil, fmt.Errorf("%w: box private key of 0 bytes, want 32", ErrConfig)
		}
		keys = func() *Keys { return DeriveKeys(cfg.SigningKey) }
	case 32:
		var k [32]byte
		copy(k[:], cfg.BoxPrivateKey)
		sign := slices.Clone(cfg.SigningKey)
		keys = func() *Keys { return NewKeys(&k, sign) }
	default:
		return nil, fmt.Errorf("%w: box private key of %d bytes, want 32", ErrConfig, len(cfg.BoxPrivateKey))
	}
	e := &Endpoint{
		cfg:    cfg,
		cnt:    cfg.Counters,
		log:    cfg.Log,
		probe:  cfg.Probe,
		byIP:   make(map[netip.Addr][]*Peer),
		byAddr: make(map[netip.AddrPort]*Peer),
		scan:   rate.NewLimiter(scanRate, scanBurst),
	}
	e.keys = sync.OnceValue(keys)
	e.bufs.New = func() any { b := make([]byte, cfg.BufSize); return &b }
	return e, nil
}

func (e *Endpoint) getBuf() *[]byte   { return e.bufs.Get().(*[]byte) }
func (e *Endpoint) putBuf(bp *[]byte) { e.bufs.Put(bp) }

// Keys returns our static keys.
func (e *Endpoint) Keys() *Keys { return e.keys() }

// Active reports whether there are v2 peers: one atomic load.
func (e *Endpoint) Active() bool { return e.n.Load() > 0 }

// Lookup returns the v2 peer configured at addr (normalised), or nil.
func (e *Endpoint) Lookup(addr netip.AddrPort) *Peer {
	if !e.Active() {
		return nil
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.byAddr[addr]
}

// onIP returns the v2 peers on ip; the caller must not modify the slice.
func (e *Endpoint) onIP(ip netip.Addr) []*Peer {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.byIP[ip]
}

func (e *Endpoint) all() []*Peer {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]*Peer, 0, len(e.byAddr))
	for _, vp := range e.byAddr {
		out = append(out, vp)
	}
	return out
}

// Close releases the zstd encoder; no peer can be added after it.
func (e *Endpoint) Close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	if z := e.z.Swap(nil); z != nil {
		z.Close()
	}
}

// KeyExchanges is the number of key exchanges accepted from v2 peers.
func (e *Endpoint) KeyExchanges() uint64 { return e.keyExchanges.Load() }

// SendLimited is the number of datagrams written to v2 peers but not
// sent: over the reference's rate limit.
func (e *Endpoint) SendLimited() uint64 { return e.sendLimited.Load() }

// kxJSON returns our key exchange advertising port.
func (e *Endpoint) kxJSON(port int) []byte {
	if m := e.kx.Load(); m != nil && m.port == port {
		return m.json
	}
	m := &kxMsg{port: port, json: AppendKeyExchange(nil, e.keys().KeyExchange(port))}
	e.kx.Store(m)
	return m.json
}

// PeerConfig is what AddPeer needs of a v2 peer's configuration.
type PeerConfig struct {
	Addr      netip.AddrPort    // normalised
	PublicKey ed25519.PublicKey // its pinned sign_key, or nil
	BoxKey    []byte            // its pinned enc_key (32 bytes), or nil
	Policy    Policy

	// Queue holds what is written before its box key is known.
	Queue Queue

	// DatagramsOut and BytesOut count what was sent to this peer
	// (besides Counters' totals); nil: not counted.
	DatagramsOut, BytesOut *atomic.Uint64
}

// AddPeer adds a v2 peer. Its replay cache starts now: a sealed datagram
// from it stamped 30 s or more before this moment is refused (a capture
// from before a restart or a re-add). The caller then calls Start.
func (e *Endpoint) AddPeer(pc PeerConfig) (*Peer, error) {
	vp := &Peer{
		e:       e,
		addr:    pc.Addr,
		policy:  pc.Policy,
		pinSign: slices.Clone(pc.PublicKey),
		out:     [2]*atomic.Uint64{pc.DatagramsOut, pc.BytesOut},
		q:       pc.Queue,
		replay:  newPeerReplayCache(replayCapacity, e.cfg.Now()),
		changed: make(chan struct{}),
	}
	vp.sign = vp.pinSign
	if pc.BoxKey != nil {
		var k [32]byte
		copy(k[:], pc.BoxKey)
		shared, err := e.keys().SharedKey(&k)
		if err != nil {
			return nil, fmt.Errorf("%w: peer %v: BoxKey: %w", ErrConfig, pc.Addr, err)
		}
		vp.pinBox, vp.box = &k, &k
		vp.shared.Store(shared)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, net.ErrClosed
	}
	if e.z.Load() == nil {
		// The reference compresses every payload, however small, as one
		// zstd frame at libzstd level 16 with the content size in the
		// header, no checksum, no dictionary id; "hello" becomes
		// 28b52ffd 20 05 290000 68656c6c6f. The encoder writes the same
		// frame parameters (an empty payload still gives a 9-byte frame,
		// which the reference delivers as ""), at klauspost's default
		// level: its levels are not libzstd's, and the reference reads
		// any valid frame. Up to 5 bytes (raw blocks) the bytes are the
		// reference's.
		z, err := zstd.NewEncoder(zstd.SpeedDefault)
		if err != nil {
			return nil, err
		}
		e.z.Store(z)
	}
	e.byAddr[vp.addr] = vp
	ip := vp.addr.Addr()
	e.byIP[ip] = append(slices.Clip(e.byIP[ip]), vp)
	e.n.Add(1)
	if port := e.cfg.LocalPort(); port != ReferenceClampPort(port) && !e.warnedPort.Swap(true) {
		e.log.Warn("vaultudp: listening port outside [1500, 65000]: a py-vault-udp application cannot add this Conn as a peer (it would use the nearest bound)", "port", port)
	}
	return vp, nil
}

// Remove forgets the peer and wakes its waiters (the Conn drops its queue).
func (vp *Peer) Remove() {
	e := vp.e
	e.mu.Lock()
	if e.byAddr[vp.addr] == vp {
		delete(e.byAddr, vp.addr)
		ip := vp.addr.Addr()
		rest := slices.DeleteFunc(slices.Clone(e.byIP[ip]), func(q *Peer) bool { return q == vp })
		if len(rest) == 0 {
			delete(e.byIP, ip)
		} else {
			e.byIP[ip] = rest
		}
		e.n.Add(-1)
	}
	e.mu.Unlock()
	vp.mu.Lock()
	if !vp.removed {
		vp.removed = true
		vp.waiting = false
		vp.notifyLocked()
	}
	vp.mu.Unlock()
}

func (vp *Peer) notifyLocked() {
	close(vp.changed)
	vp.changed = make(chan struct{})
}

// Info is what PeerInfo shows of a v2 peer.
type Info struct {
	PublicKey     ed25519.PublicKey // its sign_key, pinned or learned
	Established   bool              // we know its box key and it has shown it holds ours
	LastHandshake time.Time         // the last key exchange accepted from it
}

// Info describes the peer.
func (vp *Peer) Info() Info {
	vp.mu.Lock()
	defer vp.mu.Unlock()
	return Info{PublicKey: slices.Clone(vp.sign), Established: vp.box != nil && vp.heard, LastHandshake: vp.lastKx}
}

// Backdate moves the peer's timers (the last key exchange sent, the
// start of the wait for its box key) back by d, as if d had passed: for
// tests of the schedule.
func (vp *Peer) Backdate(d time.Duration) {
	vp.mu.Lock()
	vp.kxSent -= int64(d)
	vp.queuedAt -= int64(d)
	vp.mu.Unlock()
}

// Start sends what AddPeer sends: our key exchange when the peer's box
// key is pinned, else a probe if Config.Probe asks for one, else
// nothing (we wait for its plaintext key exchange).
func (vp *Peer) Start() {
	e := vp.e
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
		e.sendKxLocked(vp)
	case e.probe:
		e.sendProbeLocked(vp)
	}
}

// Handshake waits until the peer's box key is known and our key
// exchange has gone out, so that writes are sealed. Without a pinned
// BoxKey that takes up to one of the reference's rounds (5–20 s) unless
// Config.Probe is set; it ends with ctx or closed (net.ErrClosed), not
// with a handshake timeout.
func (vp *Peer) Handshake(ctx context.Context, closed <-chan struct{}) error {
	if vp.policy == Plaintext {
		return fmt.Errorf("%w: %v: policy is plaintext", ErrNoKey, vp.addr)
	}
	for {
		vp.mu.Lock()
		if vp.removed {
			vp.mu.Unlock()
			return fmt.Errorf("%w: %v", ErrRemoved, vp.addr)
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
		case <-closed:
			return net.ErrClosed
		}
	}
}

// backoff is the n-th retry interval (n >= 1): 1, 2, 4, 8, 15, 15 ... s.
func backoff(n int) time.Duration {
	return min(FirstRetry<<min(max(n-1, 0), 4), KeyRefreshInterval)
}

// Tick runs from the Conn's housekeeping: key exchanges that are due,
// probes, and the expiry of datagrams waiting for a box key.
func (e *Endpoint) Tick(now int64) {
	if !e.Active() {
		return
	}
	port := e.cfg.LocalPort()
	for _, vp := range e.all() {
		vp.mu.Lock()
		if vp.removed {
			vp.mu.Unlock()
			continue
		}
		// The queue is taken after mu is released (Queue's rule): a
		// datagram written in between goes with the expired ones.
		expire := vp.waiting && time.Duration(now-vp.queuedAt) >= KeyWait
		if expire {
			vp.waiting = false
		}
		var kx, probe bool
		if vp.policy != Plaintext {
			switch {
			case vp.box != nil:
				interval := KeyRefreshInterval
				if !vp.heard {
					interval = backoff(vp.kxRetries)
				}
				kx = !vp.kxEver || vp.kxPort != port || time.Duration(now-vp.kxSent) >= interval
			case e.probe:
				probe = vp.probes == 0 || time.Duration(now-vp.probeSent) >= backoff(vp.probes)
			}
		}
		vp.mu.Unlock()
		if expire {
			e.cnt.Expired.Add(uint64(len(vp.q.Take())))
		}
		// TryLock: housekeeping never waits behind a writer (one blocked
		// on a full socket buffer, say); the next tick tries again.
		if (kx || probe) && vp.sendMu.TryLock() {
			if kx {
				e.sendKxLocked(vp)
			} else {
				e.sendProbeLocked(vp)
			}
			vp.sendMu.Unlock()
		}
	}
}

// sendKxLocked sends our key exchange to vp, in plaintext (§12.3: the
// first one must be, and a refresh in plaintext also reaches a reference
// that has forgotten our keys); vp.sendMu is held.
func (e *Endpoint) sendKxLocked(vp *Peer) {
	port := e.cfg.LocalPort()
	bp := e.getBuf()
	defer e.putBuf(bp)
	frame := AppendFrame((*bp)[:0], nil, e.kxJSON(port), nil)
	if _, err := e.writeLocked(vp, frame, true); err != nil {
		e.log.Debug("vaultudp: sending v2 key exchange", "peer", vp.addr, "err", err)
	}
	vp.mu.Lock()
	first := !vp.kxEver
	vp.kxEver, vp.kxSent, vp.kxPort = true, e.cfg.Clock(), port
	if !vp.heard {
		vp.kxRetries++
	}
	if first {
		vp.notifyLocked()
	}
	vp.mu.Unlock()
}

// sendProbeLocked sends a key probe (AppendKeyProbe): a key exchange
// with our real sign_key and port but an enc_key the reference cannot
// seal with, unsigned. A reference holding no keys for us stores it and
// answers at once with its own key exchange, in plaintext because
// sealing with that key fails (§11, §13h): we learn its keys in one round
// trip and answer with our real key exchange, which overwrites the
// unusable one. The cost: a reference that already held our keys (this
// Conn restarted with the same identity, say) overwrites them with the
// probe's, answers nothing, and sends to us in plaintext, readable by an
// eavesdropper, until its next periodic key exchange (5–20 s) lets us
// answer. Hence opt-in (Config.Probe). vp.sendMu is held.
func (e *Endpoint) sendProbeLocked(vp *Peer) {
	bp := e.getBuf()
	defer e.putBuf(bp)
	ctl := AppendKeyProbe(nil, e.keys().SignKey, e.cfg.LocalPort())
	frame := AppendFrame((*bp)[:0], nil, ctl, nil)
	if _, err := e.writeLocked(vp, frame, true); err != nil {
		e.log.Debug("vaultudp: sending v2 key probe", "peer", vp.addr, "err", err)
	}
	vp.mu.Lock()
	vp.probes++
	vp.probeSent = e.cfg.Clock()
	vp.mu.Unlock()
}

// writeLocked sends one datagram to vp from the listening socket, within
// the reference's rate limit: data over it is counted and not sent
// (sent false); control always goes. vp.sendMu is held.
func (e *Endpoint) writeLocked(vp *Peer, datagram []byte, control bool) (sent bool, err error) {
	now := time.Now()
	if !control && vp.window.count(now) >= SendData {
		e.sendLimited.Add(1)
		return false, nil
	}
	vp.window.add(now)
	if err := e.cfg.Write(datagram, vp.addr); err != nil {
		return false, err
	}
	return true, nil
}

// MaxIncompressible is the largest payload that fits a frame of at most
// eff bytes when zstd cannot shrink it: a single-segment frame of one raw
// block (4 magic, 1 descriptor, 1 or 2 content size, 3 block header).
// Compressible payloads may be larger.
func MaxIncompressible(eff int) int {
	for n := eff; n > 0; n-- {
		fcs := 1
		if n >= 256 {
			fcs = 2
		}
		if FrameLen(4+1+fcs+3+n, 0, 0) <= eff {
			return n
		}
	}
	return 0
}

// padLenFor is the length of g for a sealed frame whose unpadded length
// is natural (at most eff) under Config.Padding p: 0 (to the MTU) pads as
// the reference does, -1 not at all, n > 0 so that the sealed datagram is
// a multiple of n bytes (never past the reference's size; one byte short
// where g's header grows).
func padLenFor(p, eff, natural int) int {
	switch {
	case p == 0:
		return eff - natural
	case p < 0:
		return 0
	}
	b := p
	wire := min((natural+SealOverhead+b-1)/b*b, eff+SealOverhead)
	d := wire - SealOverhead - natural
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

// appendDatagram appends a datagram carrying payload (compressed) and
// control: sealed under shared and padded per Config.Padding, or, with a
// nil shared, a plaintext frame, unpadded (nothing to hide). The
// unpadded frame must fit the reference's effective MTU (§7).
func (e *Endpoint) appendDatagram(dst []byte, shared *[32]byte, payload, control []byte) ([]byte, error) {
	eff := EffectiveMTU(e.cfg.MTU)
	natural := FrameLen(len(payload), len(control), 0)
	if natural > eff {
		return dst, fmt.Errorf("%w: %d bytes (MTU: %d)", errFrameTooLarge, natural, eff)
	}
	if shared == nil {
		return AppendFrame(dst, payload, control, nil), nil
	}
	pad := padLenFor(e.cfg.Padding, eff, natural)
	var nonces [BoxNonceLen + InnerNonceLen]byte
	rand.Read(nonces[:])
	boxNonce := (*[BoxNonceLen]byte)(nonces[:BoxNonceLen])
	inner := (*[InnerNonceLen]byte)(nonces[BoxNonceLen:])
	pp := e.getBuf()
	defer e.putBuf(pp)
	plain := appendInnerPrefix((*pp)[:0], inner, sendTimestamp(e.cfg.Now()))
	plain = AppendFrame(plain, payload, control, zeros[:pad])
	return sealBox(dst, shared, boxNonce, plain), nil
}

// Send is the write path to the peer: b is compressed (always, even
// empty: the reference expects zstd, §4), then sealed and sent, or queued
// until the peer's box key is known (RequireEncryption), or sent in
// plaintext (Opportunistic before the key, Plaintext). The size rules are
// the native ones (at most Config.MaxPayload) and the reference's (the
// compressed frame within its effective MTU, §7): a *TooLargeError
// otherwise.
func (vp *Peer) Send(b []byte) error {
	e := vp.e
	if len(b) > e.cfg.MaxPayload {
		e.cnt.TooLarge.Add(1)
		return &TooLargeError{N: len(b), Max: e.cfg.MaxPayload}
	}
	z := e.z.Load()
	if z == nil {
		return net.ErrClosed
	}
	zp := e.getBuf()
	defer e.putBuf(zp)
	payload := z.Compress((*zp)[:0], b)
	eff := EffectiveMTU(e.cfg.MTU)
	if FrameLen(len(payload), 0, 0) > eff {
		e.cnt.TooLarge.Add(1)
		return &TooLargeError{N: len(b), Max: min(MaxIncompressible(eff), e.cfg.MaxPayload)}
	}
	vp.sendMu.Lock()
	defer vp.sendMu.Unlock()
	vp.mu.Lock()
	if vp.removed {
		vp.mu.Unlock()
		return fmt.Errorf("%w: %v", ErrRemoved, vp.addr)
	}
	shared := vp.shared.Load()
	if vp.policy == Plaintext {
		shared = nil
	}
	if shared == nil && vp.policy == RequireEncryption {
		// It waits, as for a native handshake: a full queue drops it
		// (counted), and the write succeeds.
		vp.mu.Unlock()
		if vp.q.Push(b) {
			vp.mu.Lock()
			if !vp.waiting {
				vp.waiting, vp.queuedAt = true, e.cfg.Clock()
			}
			vp.mu.Unlock()
		}
		return nil
	}
	vp.mu.Unlock()
	return e.sendPayloadLocked(vp, shared, payload, len(b))
}

// sendPayloadLocked sends a compressed payload of a datagram of n bytes
// to vp; vp.sendMu is held.
func (e *Endpoint) sendPayloadLocked(vp *Peer, shared *[32]byte, payload []byte, n int) error {
	bp := e.getBuf()
	defer e.putBuf(bp)
	dg, err := e.appendDatagram((*bp)[:0], shared, payload, nil)
	if err != nil {
		return err
	}
	sent, err := e.writeLocked(vp, dg, false)
	if err != nil {
		return err
	}
	if sent {
		e.cnt.DatagramsOut.Add(1)
		e.cnt.BytesOut.Add(uint64(n))
		if vp.out[0] != nil {
			vp.out[0].Add(1)
			vp.out[1].Add(uint64(n))
		}
	}
	return nil
}

// flushLocked sends the datagrams that waited for vp's box key;
// vp.sendMu is held.
func (e *Endpoint) flushLocked(vp *Peer) {
	shared := vp.shared.Load()
	z := e.z.Load()
	if shared == nil || z == nil {
		return
	}
	vp.mu.Lock()
	vp.waiting = false
	vp.mu.Unlock()
	q := vp.q.Take()
	if len(q) == 0 {
		return
	}
	zp := e.getBuf()
	defer e.putBuf(zp)
	for _, b := range q {
		if err := e.sendPayloadLocked(vp, shared, z.Compress((*zp)[:0], b), len(b)); err != nil {
			e.log.Debug("vaultudp: sending queued v2 datagram", "peer", vp.addr, "err", err)
		}
	}
}

// Receive handles a datagram from src that is not native; scratch is a
// buffer of at least len(b) bytes for opening it. It returns false,
// counting nothing, when it is not a v2 datagram either (src's IP has no
// v2 peers, or b neither opens with their keys nor is a frame). Otherwise
// it has handled the datagram (counted what it dropped) and, when it
// carries a payload to deliver, returns the zstd-compressed payload
// (aliasing b or scratch) and the address of the peer it is from, for the
// caller to decompress and queue with that address as the source.
//
// The work it does on the reader is bounded, whatever arrives from a v2
// peer's (spoofable) IP. A sealed datagram is tried with the keys of the
// peers it is likely from: the one configured at src, and those whose
// sealed datagrams last came from src's port (the reference sends from an
// ephemeral port, §12.2). Only if none opens it is it tried with every
// other peer's key on the IP, and that at most scanRate times a second
// for the Endpoint (a peer's first datagram from a new port; past the
// budget it is dropped, and the peer's next one gets through once one
// did): junk from an IP with 64 peers costs a box open or two, not 64.
// A plaintext key exchange goes to Config.Defer.
func (e *Endpoint) Receive(src netip.AddrPort, b, scratch []byte) (from netip.AddrPort, payload []byte, took bool) {
	peers := e.onIP(src.Addr())
	if len(peers) == 0 {
		return from, nil, false
	}
	if len(b) >= BoxOverhead+InnerLen {
		likely := func(vp *Peer) bool {
			if vp.addr == src {
				return true
			}
			vp.mu.Lock()
			defer vp.mu.Unlock()
			return vp.sendPort == src.Port() || vp.kxFrom == src.Port()
		}
		open := func(vp *Peer) (ok bool, payload []byte) {
			shared := vp.shared.Load()
			if shared == nil {
				return false, nil
			}
			e.trials.Add(1)
			in, err := Open(scratch[:0], shared, b)
			if err != nil {
				return false, nil
			}
			return true, e.receiveSealed(src, vp, &in)
		}
		tried := 0
		for _, vp := range peers {
			if !likely(vp) {
				continue
			}
			tried++
			if ok, p := open(vp); ok {
				if p != nil {
					return vp.addr, p, true
				}
				return from, nil, true
			}
		}
		if tried < len(peers) && e.scan.Allow() {
			for _, vp := range peers {
				if likely(vp) {
					continue
				}
				if ok, p := open(vp); ok {
					if p != nil {
						return vp.addr, p, true
					}
					return from, nil, true
				}
			}
		}
	}
	f, err := DecodeFrame(b)
	if err != nil {
		return from, nil, false
	}
	if f.Control != nil && e.cfg.Defer != nil {
		e.cfg.Defer(src, b) // counts what it drops
		return from, nil, true
	}
	if vp := e.receivePlain(src, peers, &f); vp != nil {
		return vp.addr, f.Payload, true
	}
	return from, nil, true
}

// ReceiveDeferred handles a plaintext datagram with a key exchange that
// Receive handed to Config.Defer, off the reader; it returns what Receive
// would have: the compressed payload to deliver, if any (aliasing b), and
// the address of the peer it is from.
func (e *Endpoint) ReceiveDeferred(src netip.AddrPort, b []byte) (from netip.AddrPort, payload []byte) {
	peers := e.onIP(src.Addr())
	if len(peers) == 0 {
		return from, nil // the peers went meanwhile
	}
	f, err := DecodeFrame(b)
	if err != nil {
		e.cnt.Malformed.Add(1)
		return from, nil
	}
	if vp := e.receivePlain(src, peers, &f); vp != nil {
		return vp.addr, f.Payload
	}
	return from, nil
}

// Trials returns how many box opens Receive has tried: the reader's cost
// of sealed v2 datagrams (and of junk from a v2 peer's IP).
func (e *Endpoint) Trials() uint64 { return e.trials.Load() }

// receiveSealed handles a datagram that opened with vp's key (§11).
// It returns the payload to deliver, or nil.
func (e *Endpoint) receiveSealed(src netip.AddrPort, vp *Peer, in *Inner) []byte {
	vp.mu.Lock()
	if vp.removed {
		vp.mu.Unlock()
		return nil
	}
	if err := vp.replay.check(&in.Nonce, in.TS, e.cfg.Now()); err != nil {
		vp.mu.Unlock()
		e.cnt.Replay.Add(1)
		return nil
	}
	// It sealed with our key, so it holds our keys.
	if !vp.heard {
		vp.heard = true
		vp.notifyLocked()
	}
	vp.kxRetries = 0
	vp.sendPort = src.Port()
	vp.mu.Unlock()
	vp.seenSealed.Store(true)
	f, err := DecodeFrame(in.Frame)
	if err != nil {
		e.cnt.Malformed.Add(1) // authentic but malformed: a peer's bug
		return nil
	}
	if f.Control != nil && e.handleKeyExchange(src, nil, vp, f.Control) == nil {
		return nil // a bad control channel drops the datagram, as the reference does
	}
	return f.Payload
}

// receivePlain handles a plaintext frame from src, whose IP has peers.
// It returns the peer whose payload f carries for delivery, or nil.
func (e *Endpoint) receivePlain(src netip.AddrPort, peers []*Peer, f *Frame) *Peer {
	var vp *Peer
	if f.Control != nil {
		if vp = e.handleKeyExchange(src, peers, nil, f.Control); vp == nil {
			return nil
		}
	}
	if f.Payload == nil {
		return nil
	}
	if vp == nil {
		vp = attribute(src, peers)
	}
	if vp == nil {
		e.cnt.Policy.Add(1) // plaintext that cannot be told apart between peers
		return nil
	}
	switch vp.policy {
	case RequireEncryption:
		e.cnt.Policy.Add(1)
		return nil
	case Opportunistic:
		if vp.seenSealed.Load() {
			e.cnt.Policy.Add(1) // a downgrade: this peer has spoken sealed
			return nil
		}
	}
	return vp
}

// attribute picks the peer a plaintext payload from src belongs to: the
// one at src, else the one whose sealed datagrams come from src, else the
// only v2 peer on src's IP.
func attribute(src netip.AddrPort, peers []*Peer) *Peer {
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

// KeyExchange handles a control channel from src (§5.2, with our
// fixes). For a sealed datagram, from is the peer whose key opened it and
// the key exchange must be its own; for a plaintext one, it is for the
// peer on src's IP whose port it names (the reference sends from an
// ephemeral port, §12.2). It returns the peer whose keys it carried, or
// nil when it was refused (the caller then drops the datagram).
func (e *Endpoint) handleKeyExchange(src netip.AddrPort, peers []*Peer, from *Peer, ctl []byte) *Peer {
	kx, err := DecodeKeyExchange(ctl)
	if err != nil {
		e.cnt.Malformed.Add(1)
		return nil
	}
	var vp *Peer
	if from != nil {
		if keyExchangeMatchesPeer(src, &kx, from.addr) {
			vp = from
		}
	} else {
		for _, q := range peers {
			if keyExchangeMatchesPeer(src, &kx, q.addr) {
				vp = q
				break
			}
		}
	}
	if vp == nil {
		// It names a port that is not the peer's (§13e): it installs
		// nothing and gets no answer (the reference would answer there).
		e.cnt.Rejected.Add(1)
		return nil
	}
	if kx.EncKey == e.keys().EncKey || kx.SignKey == e.keys().SignKey {
		e.cnt.Auth.Add(1) // our own key exchange, reflected
		return nil
	}
	k, err := VerifyKeyExchange(&kx)
	if err != nil {
		e.cnt.Auth.Add(1)
		return nil
	}
	if err := e.trust(vp, &k); err != nil {
		e.cnt.Rejected.Add(1)
		e.log.Info("vaultudp: v2 key exchange refused", "peer", vp.addr, "err", err)
		return nil
	}
	if from != nil {
		// Sealed: it holds our keys; a refresh, or a new box key signed
		// by the key we trust.
		if !e.install(vp, &k) {
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
	if !e.install(vp, &k) {
		return nil
	}
	now := e.cfg.Clock()
	vp.mu.Lock()
	vp.heard = false
	// The reference sends from the port it will seal from: Receive tries
	// this peer's key first for datagrams from there. (A replayed key
	// exchange from elsewhere only changes that order; plaintext payloads
	// are attributed by sendPort, which only sealed datagrams set.)
	vp.kxFrom = src.Port()
	answer := vp.policy != Plaintext && (vp.answers == 0 || time.Duration(now-vp.answered) >= answerEvery)
	if answer {
		vp.answers++
		vp.answered = now
	}
	vp.mu.Unlock()
	if answer {
		e.sendKxLocked(vp)
	}
	e.flushLocked(vp)
	return vp
}

// trust applies the trust rules to the verified keys of a key exchange
// for vp: pinned keys must match (a pinned BoxKey alone lets any sign_key
// sign it: the box key is what protects the traffic); unpinned, a
// Config.VerifyPeer decides, else the first sign_key accepted is the only
// one accepted until the peer is removed (trust on first use; a new box
// key signed by it is a legitimate change).
func (e *Endpoint) trust(vp *Peer, k *PeerKeys) error {
	vp.mu.Lock()
	known := vp.sign
	vp.mu.Unlock()
	switch {
	case vp.pinSign != nil && !bytes.Equal(vp.pinSign, k.Sign):
		return fmt.Errorf("%w: %v presented sign_key %s, pinned key is %s", ErrRejected, vp.addr, B64.EncodeToString(k.Sign), B64.EncodeToString(vp.pinSign))
	case vp.pinBox != nil && *vp.pinBox != k.Box:
		return fmt.Errorf("%w: %v presented enc_key %s, pinned BoxKey is %s", ErrRejected, vp.addr, B64.EncodeToString(k.Box[:]), B64.EncodeToString(vp.pinBox[:]))
	case vp.pinSign != nil || vp.pinBox != nil:
	case e.cfg.VerifyPeer != nil:
		if err := e.cfg.VerifyPeer(vp.addr, slices.Clone(k.Sign)); err != nil {
			return fmt.Errorf("%w: %v: %w", ErrRejected, vp.addr, err)
		}
	case known != nil && !bytes.Equal(known, k.Sign):
		return fmt.Errorf("%w: %v presented sign_key %s, but it used %s before (trust on first use)", ErrRejected, vp.addr, B64.EncodeToString(k.Sign), B64.EncodeToString(known))
	}
	return nil
}

// install stores the keys of an accepted key exchange.
func (e *Endpoint) install(vp *Peer, k *PeerKeys) bool {
	vp.mu.Lock()
	defer vp.mu.Unlock()
	if vp.removed {
		return false
	}
	if vp.box == nil || *vp.box != k.Box {
		shared, err := e.keys().SharedKey(&k.Box)
		if err != nil {
			e.cnt.Auth.Add(1)
			return false
		}
		changed := vp.box != nil
		b := k.Box
		vp.box = &b
		vp.shared.Store(shared)
		vp.notifyLocked()
		e.log.Debug("vaultudp: v2 box key learned", "peer", vp.addr, "changed", changed)
	}
	vp.sign = slices.Clone(k.Sign)
	vp.lastKx = e.cfg.Now()
	e.keyExchanges.Add(1)
	return true
}
