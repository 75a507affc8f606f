package vaultudp

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// The key exchange is protocol version 4's: the Noise pattern
// XXhfs+psk2 with X25519 and ML-KEM-768, Ed25519 identities signed over a
// fresh Noise static key per handshake, in three flights (PROTOCOL.md
// section 4 and 9 give every byte; internal/noise computes them):
//
//	hello  (initiator → responder) 1360 bytes: Noise message 1, padded so
//	       that no reply exceeds it, then a cookie (zeros, or the
//	       responder's)
//	reply  (responder → initiator) 1337 bytes: message 2, the responder's
//	       identity, index and session parameters encrypted
//	final  (initiator → responder) 194 bytes: message 3, the initiator's
//	       identity and parameters encrypted, then perhaps its first
//	       sealed datagram
//	cookie (responder → initiator, under load) 24 bytes
//
// Each is a datagram of its own (version 4, then its type), not an open
// envelope. The responder decides on the initiator's identity only at the
// final message, the initiator on the responder's at the reply, each
// before anything is delivered.

const (
	// ProtocolVersion is the native wire protocol version: the first
	// byte of every datagram.
	ProtocolVersion = noise.Version

	typeHello  = noise.TypeHello
	typeReply  = noise.TypeReply
	typeCookie = noise.TypeCookie
	typeFinal  = noise.TypeFinal

	keyLen    = 32
	cookieLen = noise.CookieLen
)

// nativeVersions is what this implementation speaks, in order of
// preference (highest first).
var nativeVersions = []byte{ProtocolVersion}

// handshaker holds the local side of key exchanges: the identity and the
// versions spoken. It has no mutable state and is safe for concurrent use.
type handshaker struct {
	identity ed25519.PrivateKey
	public   ed25519.PublicKey
	versions []byte
}

func newHandshaker(identity ed25519.PrivateKey) *handshaker {
	return &handshaker{
		identity: identity,
		public:   identity.Public().(ed25519.PublicKey),
		versions: nativeVersions,
	}
}

// spareEntropy is the first handshake's random values, made ahead by a
// goroutine that starts with the Conn (Listen), so that neither side of
// the first handshake waits for them: a signed Noise static key, an
// X25519 ephemeral key and an ML-KEM-768 key (about 190 µs here). Taken
// by exactly one handshake (taken); one that needs it while it is being
// made waits for it, one that comes first makes it itself (make runs
// once). Later handshakes make their own: they are not waited for as the
// first is, and keys made long before their use would only sit in memory.
type spareEntropy struct {
	taken atomic.Bool
	make  func() (*spareSet, error)
	done  chan struct{} // closed when the goroutine has returned
}

type spareSet struct {
	static *noise.Static
	eph    *ecdh.PrivateKey
	kem    *mlkem.DecapsulationKey768
}

func newSpareEntropy(identity ed25519.PrivateKey) *spareEntropy {
	k := &spareEntropy{done: make(chan struct{})}
	k.make = sync.OnceValues(func() (*spareSet, error) {
		st, err := noise.NewStatic(identity, nil)
		if err != nil {
			return nil, err
		}
		var sys noise.System
		eph, err := sys.X25519()
		if err != nil {
			return nil, err
		}
		kem, err := sys.MLKEM768()
		if err != nil {
			return nil, err
		}
		return &spareSet{static: st, eph: eph, kem: kem}, nil
	})
	go func() {
		defer close(k.done)
		k.make()
	}()
	return k
}

// handshakeEntropy returns the static key and the random source for one
// handshake: the spare's the first time, fresh ones after.
func (c *Conn) handshakeEntropy() (*noise.Static, noise.Entropy, error) {
	if c.spare.taken.CompareAndSwap(false, true) {
		if set, err := c.spare.make(); err == nil {
			return set.static, &preparedEntropy{x: set.eph, k: set.kem}, nil
		}
	}
	st, err := noise.NewStatic(c.hs.identity, nil)
	return st, nil, err
}

// preparedEntropy hands out keys made ahead once each, then the system's.
type preparedEntropy struct {
	x   *ecdh.PrivateKey
	k   *mlkem.DecapsulationKey768
	sys noise.System
}

func (e *preparedEntropy) X25519() (*ecdh.PrivateKey, error) {
	if x := e.x; x != nil {
		e.x = nil
		return x, nil
	}
	return e.sys.X25519()
}

func (e *preparedEntropy) MLKEM768() (*mlkem.DecapsulationKey768, error) {
	if k := e.k; k != nil {
		e.k = nil
		return k, nil
	}
	return e.sys.MLKEM768()
}

func (e *preparedEntropy) Encapsulate768(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
	return e.sys.Encapsulate768(ek)
}

// initiation is a hello we sent and whose reply we wait for. localIndex
// and n never change once it is made; n's state is used only by replies'
// commits, one at a time (handshake_workers.go), and its ephemeral key,
// which never changes, by any worker (crossed hellos). hello (with its
// cookie) is replaced under the peer's lock, and read under it.
type initiation struct {
	localIndex uint32
	n          *noise.Initiation
	hello      []byte // the whole datagram, cookie last
}

// cookie returns the cookie in the hello (zeros if none).
func (i *initiation) cookie() []byte { return i.hello[len(i.hello)-cookieLen:] }

// setCookie puts a cookie from the responder into the hello, for the next
// send. The cookie is outside the transcript: the rest stays. The hello
// is copied, not changed in place: a sender may still hold the old.
func (i *initiation) setCookie(cookie []byte) {
	h := bytes.Clone(i.hello)
	copy(h[len(h)-cookieLen:], cookie)
	i.hello = h
}

// response is a reply we sent, waiting for the initiator's final
// message: the Noise state, the address the hello came from and where it
// arrived, and when. A peer holds two at most (respNew, respOld).
type response struct {
	mu          sync.Mutex      // guards r's use: two workers may read final messages for it at once
	r           *noise.Response // under mu
	localIndex  uint32
	helloEph    [32]byte // the hello's ephemeral key: with its sender index, what names the hello (answeredLocked)
	from        netip.AddrPort
	local       netip.Addr
	created     int64        // Conn clock
	result      *finalResult // its final message, read, while trust waits (commitFinal); under the peer's lock
	judgedAgain bool         // result was queued to be judged again (onLivenessUnanswered); under the peer's lock
	path        int          // the path's size to from (Conn.pathDatagram), looked up after the reply went; under the peer's lock
	// held are sealed datagrams for the session that came before the
	// final message (it travels the handshake queue, they do not), up to
	// maxHeld, under the peer's lock; received once the session is made.
	held []*packet
}

// maxHeld bounds the sealed datagrams a response holds for its session.
const maxHeld = 8

// sessionKeys are the outcome of a completed exchange.
type sessionKeys struct {
	send, recv   [keyLen]byte
	localIndex   uint32
	remoteIndex  uint32
	version      uint8
	initiator    bool
	peerIdentity ed25519.PublicKey // a copy, safe to keep
}

// params returns the session parameters this Conn states for its session
// with local index idx, with the peer at addr: the sizes it receives and
// its reset token, bound to that path (reset.go).
func (c *Conn) params(idx uint32, addr netip.AddrPort) noise.Params {
	return noise.Params{
		MaxUnfragmented: uint16(min(c.accept(), 65535)),
		MaxDatagram:     uint16(min(c.acceptWhole(), 65535)),
		ResetToken:      c.resets.token(idx, addr, c.localPort()),
		HasToken:        true,
	}
}

// applyParams sets what the peer's session parameters say on s.
func applyParams(s *session, pp *noise.Params) {
	if pp.MaxUnfragmented > 0 {
		s.peerAccept.Store(int32(pp.MaxUnfragmented))
	}
	if pp.MaxDatagram > 0 {
		s.peerWhole.Store(int32(pp.MaxDatagram))
	}
	if pp.HasToken {
		t := pp.ResetToken
		s.peerToken.Store(&t)
	}
}

// pskFor returns the preshared key for handshakes with p (nil: the
// Config's), or with the address of a hello from no configured peer.
func (c *Conn) pskFor(p *peer) *[noise.PSKLen]byte {
	if p != nil && p.psk != nil {
		return p.psk
	}
	return c.psk
}

// trust applies the trust rules to key presented by p (nil if the address
// is not a peer yet) at addr.
func (c *Conn) trust(p *peer, addr netip.AddrPort, key ed25519.PublicKey) error {
	var pinned, known ed25519.PublicKey
	if p != nil {
		p.mu.Lock()
		pinned, known = p.pinned, p.identity
		p.mu.Unlock()
	}
	switch {
	case pinned != nil:
		if !bytes.Equal(pinned, key) {
			return fmt.Errorf("%w: %v presented %s, pinned key is %s", ErrPeerRejected, addr, EncodePublicKey(key), EncodePublicKey(pinned))
		}
	case c.cfg.VerifyPeer != nil:
		if err := c.verifyPeer(addr, key); err != nil {
			return fmt.Errorf("%w: %v presented %s: %w", ErrPeerRejected, addr, EncodePublicKey(key), err)
		}
	case known != nil && !bytes.Equal(known, key):
		return fmt.Errorf("%w: %v presented %s, but it used %s before (trust on first use)", ErrPeerRejected, addr, EncodePublicKey(key), EncodePublicKey(known))
	}
	return nil
}

// verifyPeer asks Config.VerifyPeer, on a goroutine of its own, and waits
// for its answer or for Close. The callback is the application's code and
// may call Close, which waits for the handshake worker that waits here:
// Close then ends the wait, and the callback's goroutine returns from
// Close and ends by itself.
func (c *Conn) verifyPeer(addr netip.AddrPort, key ed25519.PublicKey) error {
	answer := make(chan error, 1)
	go func() { answer <- c.cfg.VerifyPeer(addr, slicesClone(key)) }()
	select {
	case err := <-answer:
		return err
	case <-c.closed:
		return ErrClosed
	}
}

// tofuOnly reports whether the only trust rule for p is the key it used
// first: a learned peer, no pinned key, no Config.VerifyPeer.
func (c *Conn) tofuOnly(p *peer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.configured && p.pinned == nil && c.cfg.VerifyPeer == nil
}

// hasIdentity reports whether key is the identity of p's sessions.
func (p *peer) hasIdentity(key ed25519.PublicKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.identity == nil || bytes.Equal(p.identity, key)
}

func slicesClone(k ed25519.PublicKey) ed25519.PublicKey { return append(ed25519.PublicKey(nil), k...) }
