package vaultudp

import (
	"crypto/cipher"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// The sealed form of a datagram:
//
//	0  version   uint8 = 4
//	1  type      uint8 = typeSealed
//	2  reserved  2 bytes, zero
//	4  receiver  uint32, big endian: the session index the receiver chose
//	8  counter   uint64, big endian: the sender's message counter
//	16 ciphertext of the envelope, then the 16-byte Poly1305 tag
//
// ChaCha20-Poly1305 with the 16-byte header as additional data and the
// nonce 0x00000000 || counter (big endian). The counter starts at 0 and
// never repeats within a session (one key per direction), so neither does
// the nonce.
//
// The open form is the version, type typeOpen and the envelope in clear.
const (
	typeSealed = 1
	typeOpen   = 2

	openHeaderLen = 2

	// rekeyAfterMessages starts a new handshake long before the counter
	// nears counterLimit, where the session stops.
	rekeyAfterMessages = 1 << 60
)

// Session lifetimes, derived from Config.KeyLifetime (T): a session is
// renewed after T and refused after rejectAfter(T) = 1.5 T (wireguard-go
// uses 120 s and 180 s).
func rejectAfter(keyLifetime time.Duration) time.Duration { return keyLifetime + keyLifetime/2 }

// session is one peer's keys in both directions, from one handshake.
type session struct {
	localIndex  uint32
	remoteIndex uint32
	version     uint8
	initiator   bool
	created     int64 // monotonic nanoseconds (Conn clock) when keys were made
	peer        *peer

	send    cipher.AEAD
	recv    cipher.AEAD
	recvKey [keyLen]byte // recv's key, to tell a cut datagram from a forgery (sizes.go)

	sendCounter atomic.Uint64 // the next counter to send

	// peerToken is the peer's reset token for this session (reset.go),
	// from its session parameters in the handshake; nil if it sent none.
	peerToken atomic.Pointer[[tokenLen]byte]

	// path is the largest datagram that reaches the peer unfragmented,
	// set at install; peerAccept the largest it receives, from its
	// session parameters in the handshake (zero if it sent none).
	// sizes.go.
	path       int
	peerAccept atomic.Int32
	peerWhole  atomic.Int32 // the largest it receives at all, fragmented

	// identity is the peer's key in this session's handshake (set at
	// install), which the trust rules accepted.
	identity ed25519.PublicKey
	// final is the initiator's final message (with the datagram
	// coalesced in it), sent again every retry interval until a sealed
	// datagram from the responder opens under the session, then nil;
	// finalSent is the Conn clock when it was last sent (timers.go).
	final     atomic.Pointer[[]byte]
	finalSent atomic.Int64
	// finalAcked is the Conn clock (|1) when the responder last answered
	// a final message for the session (handshake_responder.go).
	finalAcked atomic.Int64

	// mu guards the fields below.
	mu     sync.Mutex
	replay replayWindow
}

func newSession(k *sessionKeys, created int64) (*session, error) {
	send, err := chacha20poly1305.New(k.send[:])
	if err != nil {
		return nil, err
	}
	recv, err := chacha20poly1305.New(k.recv[:])
	if err != nil {
		return nil, err
	}
	s := &session{
		localIndex:  k.localIndex,
		remoteIndex: k.remoteIndex,
		version:     k.version,
		initiator:   k.initiator,
		created:     created,
		send:        send,
		recv:        recv,
		recvKey:     k.recv,
	}
	return s, nil
}

// putSealedHeader writes the sealed header for counter into b[:16].
func putSealedHeader(b []byte, receiver uint32, counter uint64) {
	b[0] = ProtocolVersion
	b[1] = typeSealed
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:], receiver)
	binary.BigEndian.PutUint64(b[8:], counter)
}

func nonceFor(counter uint64) (n [chacha20poly1305.NonceSize]byte) {
	binary.BigEndian.PutUint64(n[4:], counter)
	return n
}

// noncePool holds nonce buffers for seal and open. A nonce passed to a
// cipher.AEAD method (an interface call) escapes, so a local array cost one
// heap allocation (16 B) per datagram sealed or opened; pooled, the steady
// state allocates nothing (TestSealedNoAllocs).
var noncePool = sync.Pool{New: func() any { return new([chacha20poly1305.NonceSize]byte) }}

// nextCounter reserves the next send counter. It fails once the session
// has used up its counters: the caller must rekey.
func (s *session) nextCounter() (uint64, error) {
	c := s.sendCounter.Add(1) - 1
	if c >= counterLimit {
		s.sendCounter.Store(counterLimit) // stay exhausted, never wrap
		return 0, fmt.Errorf("%w: session counter exhausted", ErrNoSession)
	}
	return c, nil
}

// seal encrypts in place: b[:16] is space for the header and
// b[16:] the envelope, with room for the tag in cap(b). It returns the
// whole datagram.
func (s *session) seal(b []byte) ([]byte, error) {
	c, err := s.nextCounter()
	if err != nil {
		return nil, err
	}
	// Room for the tag is a precondition; without it Seal would put its
	// output in a new array and the slice of b below would panic. Grow is
	// a no-op (no allocation) when the caller left the room.
	b = slices.Grow(b, tagLen)
	putSealedHeader(b, s.remoteIndex, c)
	nonce := noncePool.Get().(*[chacha20poly1305.NonceSize]byte)
	*nonce = nonceFor(c)
	out := s.send.Seal(b[sealedHeaderLen:sealedHeaderLen], nonce[:], b[sealedHeaderLen:], b[:sealedHeaderLen])
	noncePool.Put(nonce)
	return b[:sealedHeaderLen+len(out)], nil
}

// sealedIndex reads the receiver index of a sealed datagram, so the
// caller can find the session. ok is false if b is not a sealed datagram
// of plausible length with zero reserved bytes.
func sealedIndex(b []byte) (index uint32, ok bool) {
	if len(b) < sealedOverhead || b[0] != ProtocolVersion || b[1] != typeSealed || b[2] != 0 || b[3] != 0 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[4:]), true
}

// open authenticates and decrypts a sealed datagram in place and returns
// the envelope (aliasing b). The counter is marked in the replay window
// only after authentication succeeded, so forgeries cannot move it.
func (s *session) open(b []byte) ([]byte, error) {
	env, counter, err := s.decrypt(b)
	if err != nil {
		return nil, err
	}
	if !s.accept(counter) {
		return nil, errReplay
	}
	return env, nil
}

// decrypt is open without the replay window: it authenticates and
// decrypts b in place and returns the envelope and b's counter, which the
// caller passes to accept before it uses the envelope. It touches no
// state of s, so datagrams of one session may be decrypted in parallel
// (receive_workers.go) and accepted in the order they came.
func (s *session) decrypt(b []byte) (env []byte, counter uint64, err error) {
	// The Conn calls sealedIndex first, but decrypt must not rely on it:
	// a datagram shorter than the header made the counter read panic.
	if len(b) < sealedOverhead {
		return nil, 0, errMalformed
	}
	counter = binary.BigEndian.Uint64(b[8:])
	if counter >= counterLimit {
		return nil, 0, errReplay
	}
	nonce := noncePool.Get().(*[chacha20poly1305.NonceSize]byte)
	*nonce = nonceFor(counter)
	env, err = s.recv.Open(b[sealedHeaderLen:sealedHeaderLen], nonce[:], b[sealedHeaderLen:], b[:sealedHeaderLen])
	noncePool.Put(nonce)
	if err != nil {
		return nil, 0, errAuth
	}
	return env, counter, nil
}

// accept marks counter, of a datagram decrypt authenticated, in the
// replay window, and reports whether it was fresh.
func (s *session) accept(counter uint64) bool {
	s.mu.Lock()
	fresh := s.replay.checkAndUpdate(counter)
	s.mu.Unlock()
	return fresh
}
