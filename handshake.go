package vaultudp

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2b"
)

// The key exchange: one round trip, hello then reply, carried as control
// messages ("c") in open envelopes. Each side contributes a fresh X25519
// ephemeral key (forward secrecy) and signs with its long-term Ed25519
// identity. PROTOCOL.md gives every byte; in short:
//
//	hello (initiator → responder), 78+n+64+16 bytes with n versions:
//	  0  type = 1
//	  1  sender index   uint32, big endian
//	  5  timestamp      uint64, Unix nanoseconds, big endian
//	  13 ephemeral      32 bytes, X25519 public key
//	  45 identity       32 bytes, Ed25519 public key
//	  77 n              uint8, 1..maxVersions
//	  78 versions       n bytes, the protocol versions the sender speaks
//	  .. signature      64 bytes: Ed25519 over helloLabel || bytes 0..78+n
//	  .. cookie         16 bytes: zeros, or the responder's cookie (not signed)
//
//	reply (responder → initiator), 82+n+64 bytes:
//	  0  type = 2
//	  1  sender index   uint32 (the responder's)
//	  5  receiver index uint32 (the hello's sender index)
//	  9  timestamp      uint64
//	  17 ephemeral      32 bytes
//	  49 identity       32 bytes
//	  81 n              uint8
//	  82 versions       n bytes
//	  .. signature      64 bytes: Ed25519 over
//	                    replyLabel || hello without its cookie || bytes 0..82+n
//
//	cookie (responder → initiator, under load), 21 bytes:
//	  0  type = 3
//	  1  receiver index uint32 (the hello's sender index)
//	  5  cookie         16 bytes
//
// The reply's signature covers the whole signed hello, so it binds both
// ephemeral keys and both version lists: swapping an ephemeral or stripping
// a version breaks a signature. Keys:
//
//	th   = BLAKE2b-256(transcriptLabel || hello without cookie || reply)
//	dh   = X25519(own ephemeral private, peer ephemeral public)
//	okm  = BLAKE2b-512(key = dh, keysLabel || th)
//	initiator → responder key = okm[0:32], responder → initiator = okm[32:64]

const (
	ctlHello  = 1
	ctlReply  = 2
	ctlCookie = 3

	// ProtocolVersion is the native wire protocol version: the first
	// byte of every datagram.
	ProtocolVersion = 3

	maxVersions = 8
	keyLen      = 32
	cookieLen   = 16

	helloFixedLen = 78 // up to the version list
	replyFixedLen = 82
	cookieMsgLen  = 1 + 4 + cookieLen
)

var (
	helloLabel      = []byte("vaultudp/3 hello\x00")
	replyLabel      = []byte("vaultudp/3 reply\x00")
	transcriptLabel = []byte("vaultudp/3 transcript\x00")
	keysLabel       = []byte("vaultudp/3 keys\x00")

	// nativeVersions is what this implementation speaks, in order of
	// preference (highest first).
	nativeVersions = []byte{ProtocolVersion}
)

// handshaker holds the local side of key exchanges: the identity and the
// versions spoken. It has no mutable state and is safe for concurrent use;
// the state of one exchange is an initiation.
type handshaker struct {
	identity ed25519.PrivateKey
	public   ed25519.PublicKey
	versions []byte
}

// ephemeral returns a fresh X25519 key for one hello or one reply. The
// first is the Conn's spare, made ahead (spareKey), so that the first
// handshake does not wait for the scalar multiplication (43 us here) on
// either side. Later handshakes make their own: they are not waited for
// as the first is, and a key made long before its use would only sit in
// memory.
func (c *Conn) ephemeral() (*ecdh.PrivateKey, error) {
	if c.spare.taken.CompareAndSwap(false, true) {
		return c.spare.key()
	}
	return ecdh.X25519().GenerateKey(rand.Reader)
}

// spareKey is an ephemeral key a goroutine starts making with the Conn
// (in Listen, before the socket), for one message: taken gives it to
// exactly one. A message that needs it while it is being made waits for
// it, one that comes first makes it itself (key runs once).
type spareKey struct {
	taken atomic.Bool
	key   func() (*ecdh.PrivateKey, error)
	done  chan struct{} // closed when the goroutine has returned
}

func newSpareKey() *spareKey {
	k := &spareKey{done: make(chan struct{})}
	k.key = sync.OnceValues(func() (*ecdh.PrivateKey, error) { return ecdh.X25519().GenerateKey(rand.Reader) })
	go func() {
		defer close(k.done)
		k.key()
	}()
	return k
}

func newHandshaker(identity ed25519.PrivateKey) *handshaker {
	return &handshaker{
		identity: identity,
		public:   identity.Public().(ed25519.PublicKey),
		versions: nativeVersions,
	}
}

// initiation is a hello we sent and whose reply we wait for. Its fields
// but hello never change once it is made, so the handshake goroutine
// reads them without a lock; hello is replaced (with its cookie) under the
// peer's lock, and read under it.
type initiation struct {
	localIndex uint32
	ephemeral  *ecdh.PrivateKey
	signed     []byte // the hello without its cookie: what the reply signs
	hello      []byte // the whole control message, cookie last
	timestamp  uint64
}

// signedHello is the part of a hello that the reply signs and the
// transcript hashes: everything but the cookie.
func (i *initiation) signedHello() []byte { return i.signed }

// cookie returns the cookie in the hello (zeros if none).
func (i *initiation) cookie() []byte { return i.hello[len(i.hello)-cookieLen:] }

// setCookie puts a cookie from the responder into the hello, for the next
// retransmission. The signature does not cover it, so no re-signing. The
// hello is copied, not changed in place: a sender may still hold the old.
func (i *initiation) setCookie(cookie []byte) {
	h := bytes.Clone(i.hello)
	copy(h[len(h)-cookieLen:], cookie)
	i.hello = h
}

// initiate builds a hello with the given ephemeral key and local session
// index, timestamped now.
func (h *handshaker) initiate(now time.Time, index uint32, eph *ecdh.PrivateKey) *initiation {
	n := len(h.versions)
	msg := make([]byte, helloFixedLen+n, helloFixedLen+n+ed25519.SignatureSize+cookieLen)
	ts := uint64(now.UnixNano())
	msg[0] = ctlHello
	binary.BigEndian.PutUint32(msg[1:], index)
	binary.BigEndian.PutUint64(msg[5:], ts)
	copy(msg[13:45], eph.PublicKey().Bytes())
	copy(msg[45:77], h.public)
	msg[77] = byte(n)
	copy(msg[78:], h.versions)
	msg = append(msg, h.sign(helloLabel, msg)...)
	msg = append(msg, make([]byte, cookieLen)...)
	return &initiation{localIndex: index, ephemeral: eph, signed: bytes.Clone(msg[:len(msg)-cookieLen]), hello: msg, timestamp: ts}
}

func (h *handshaker) sign(parts ...[]byte) []byte {
	return ed25519.Sign(h.identity, bytes.Join(parts, nil))
}

// helloMsg is a parsed hello. Its slices alias the received bytes.
type helloMsg struct {
	senderIndex uint32
	timestamp   uint64
	ephemeral   []byte
	identity    ed25519.PublicKey
	versions    []byte
	signed      []byte // bytes covered by the signature
	signature   []byte
	cookie      []byte
	raw         []byte // the hello without its cookie
}

// parseHello checks a hello's structure (cheap: no cryptography).
func parseHello(msg []byte) (*helloMsg, error) {
	if len(msg) < helloFixedLen || msg[0] != ctlHello {
		return nil, fmt.Errorf("%w: hello of %d bytes", errMalformed, len(msg))
	}
	n := int(msg[77])
	if n == 0 || n > maxVersions || len(msg) != helloFixedLen+n+ed25519.SignatureSize+cookieLen {
		return nil, fmt.Errorf("%w: hello of %d bytes with %d versions", errMalformed, len(msg), n)
	}
	sigOff := helloFixedLen + n
	return &helloMsg{
		senderIndex: binary.BigEndian.Uint32(msg[1:]),
		timestamp:   binary.BigEndian.Uint64(msg[5:]),
		ephemeral:   msg[13:45],
		identity:    ed25519.PublicKey(msg[45:77]),
		versions:    msg[78:sigOff],
		signed:      msg[:sigOff],
		signature:   msg[sigOff : sigOff+ed25519.SignatureSize],
		cookie:      msg[sigOff+ed25519.SignatureSize:],
		raw:         msg[:sigOff+ed25519.SignatureSize],
	}, nil
}

// verify checks the hello's signature (the expensive step).
func (m *helloMsg) verify() error {
	if !verifyParts(m.identity, m.signature, helloLabel, m.signed) {
		return fmt.Errorf("%w: bad hello signature", errAuth)
	}
	return nil
}

func verifyParts(key ed25519.PublicKey, sig []byte, parts ...[]byte) bool {
	return ed25519.Verify(key, bytes.Join(parts, nil), sig)
}

// replyMsg is a parsed reply. Its slices alias the received bytes.
type replyMsg struct {
	senderIndex   uint32
	receiverIndex uint32
	timestamp     uint64
	ephemeral     []byte
	identity      ed25519.PublicKey
	versions      []byte
	signed        []byte
	signature     []byte
	raw           []byte
}

func parseReply(msg []byte) (*replyMsg, error) {
	if len(msg) < replyFixedLen || msg[0] != ctlReply {
		return nil, fmt.Errorf("%w: reply of %d bytes", errMalformed, len(msg))
	}
	n := int(msg[81])
	if n == 0 || n > maxVersions || len(msg) != replyFixedLen+n+ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: reply of %d bytes with %d versions", errMalformed, len(msg), n)
	}
	sigOff := replyFixedLen + n
	return &replyMsg{
		senderIndex:   binary.BigEndian.Uint32(msg[1:]),
		receiverIndex: binary.BigEndian.Uint32(msg[5:]),
		timestamp:     binary.BigEndian.Uint64(msg[9:]),
		ephemeral:     msg[17:49],
		identity:      ed25519.PublicKey(msg[49:81]),
		versions:      msg[82:sigOff],
		signed:        msg[:sigOff],
		signature:     msg[sigOff:],
		raw:           msg,
	}, nil
}

// sessionKeys are the outcome of a completed exchange.
type sessionKeys struct {
	send, recv   [keyLen]byte
	localIndex   uint32
	remoteIndex  uint32
	version      uint8
	initiator    bool
	peerIdentity ed25519.PublicKey // a copy, safe to keep
}

// checkFresh accepts a timestamp within window of now, in either
// direction (clocks differ).
func checkFresh(ts uint64, now time.Time, window time.Duration) error {
	d := time.Duration(int64(ts) - now.UnixNano())
	if d < -window || d > window {
		return fmt.Errorf("%w: timestamp %v from now, outside ±%v", errStale, d.Round(time.Millisecond), window)
	}
	return nil
}

// commonVersion picks the highest version in both lists.
func commonVersion(ours, theirs []byte) (uint8, error) {
	best := -1
	for _, o := range ours {
		if bytes.IndexByte(theirs, o) >= 0 && int(o) > best {
			best = int(o)
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("%w: we speak %v, peer speaks %v", errVersion, ours, theirs)
	}
	return uint8(best), nil
}

// respond answers a hello that the caller has parsed, verified, checked
// for freshness and trusted. It returns the reply to send and the keys of
// the new session, with index as its local index.
func (h *handshaker) respond(m *helloMsg, now time.Time, index uint32, eph *ecdh.PrivateKey) ([]byte, *sessionKeys, error) {
	if bytes.Equal(m.identity, h.public) {
		return nil, nil, errReflected
	}
	version, err := commonVersion(h.versions, m.versions)
	if err != nil {
		return nil, nil, err
	}
	peerEph, err := ecdh.X25519().NewPublicKey(m.ephemeral)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: ephemeral key: %v", errMalformed, err)
	}
	dh, err := eph.ECDH(peerEph)
	if err != nil { // a low-order point: the shared secret would be zero
		return nil, nil, fmt.Errorf("%w: ephemeral key: %v", errAuth, err)
	}
	n := len(h.versions)
	reply := make([]byte, replyFixedLen+n, replyFixedLen+n+ed25519.SignatureSize)
	reply[0] = ctlReply
	binary.BigEndian.PutUint32(reply[1:], index)
	binary.BigEndian.PutUint32(reply[5:], m.senderIndex)
	binary.BigEndian.PutUint64(reply[9:], uint64(now.UnixNano()))
	copy(reply[17:49], eph.PublicKey().Bytes())
	copy(reply[49:81], h.public)
	reply[81] = byte(n)
	copy(reply[82:], h.versions)
	reply = append(reply, h.sign(replyLabel, m.raw, reply)...)

	i2r, r2i := deriveKeys(dh, m.raw, reply)
	return reply, &sessionKeys{
		send: r2i, recv: i2r,
		localIndex: index, remoteIndex: m.senderIndex,
		version: version, initiator: false,
		peerIdentity: bytes.Clone(m.identity),
	}, nil
}

// complete finishes our initiation with a parsed reply. The caller checks
// trust in r.identity. It fails, changing nothing, if the reply does not
// answer this initiation or its signature does not cover this hello.
func (h *handshaker) complete(i *initiation, r *replyMsg, now time.Time, window time.Duration) (*sessionKeys, error) {
	if r.receiverIndex != i.localIndex {
		return nil, fmt.Errorf("%w: reply for index %d, ours is %d", errUnexpected, r.receiverIndex, i.localIndex)
	}
	if bytes.Equal(r.identity, h.public) {
		return nil, errReflected
	}
	if err := checkFresh(r.timestamp, now, window); err != nil {
		return nil, err
	}
	if !verifyParts(r.identity, r.signature, replyLabel, i.signedHello(), r.signed) {
		return nil, fmt.Errorf("%w: bad reply signature", errAuth)
	}
	version, err := commonVersion(h.versions, r.versions)
	if err != nil {
		return nil, err
	}
	peerEph, err := ecdh.X25519().NewPublicKey(r.ephemeral)
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral key: %v", errMalformed, err)
	}
	dh, err := i.ephemeral.ECDH(peerEph)
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral key: %v", errAuth, err)
	}
	i2r, r2i := deriveKeys(dh, i.signedHello(), r.raw)
	return &sessionKeys{
		send: i2r, recv: r2i,
		localIndex: i.localIndex, remoteIndex: r.senderIndex,
		version: version, initiator: true,
		peerIdentity: bytes.Clone(r.identity),
	}, nil
}

// deriveKeys turns the shared secret and the transcript into one key per
// direction.
func deriveKeys(dh, hello, reply []byte) (i2r, r2i [keyLen]byte) {
	th := blake2b.Sum256(bytes.Join([][]byte{transcriptLabel, hello, reply}, nil))
	mac, err := blake2b.New512(dh)
	if err != nil {
		panic(err) // dh is 32 bytes: cannot happen
	}
	mac.Write(keysLabel)
	mac.Write(th[:])
	okm := mac.Sum(nil)
	copy(i2r[:], okm[:keyLen])
	copy(r2i[:], okm[keyLen:])
	clear(okm)
	return i2r, r2i
}

// cookieMsg builds the cookie control message for a hello's sender.
func cookieMsg(receiverIndex uint32, cookie []byte) []byte {
	msg := make([]byte, cookieMsgLen)
	msg[0] = ctlCookie
	binary.BigEndian.PutUint32(msg[1:], receiverIndex)
	copy(msg[5:], cookie)
	return msg
}

func parseCookieMsg(msg []byte) (receiverIndex uint32, cookie []byte, err error) {
	if len(msg) != cookieMsgLen || msg[0] != ctlCookie {
		return 0, nil, fmt.Errorf("%w: cookie message of %d bytes", errMalformed, len(msg))
	}
	return binary.BigEndian.Uint32(msg[1:]), msg[5:], nil
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
// may call Close, which waits for the handshake goroutine that waits here:
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
