package noise

import (
	"crypto/ecdh"
	"crypto/mlkem"
	"errors"
	"fmt"
)

// ProtocolName is the Noise protocol name of the v4 handshake: the XX
// pattern with the hfs modifier (KEM-based hybrid forward secrecy, the
// e1 and ekem1 tokens) and the psk modifier at position 2, X25519 for DH,
// ML-KEM-768 as the KEM, ChaCha20-Poly1305 and SHA-256. It is the first
// input of the handshake hash, so two sides that differ in any part of it
// fail at the first AEAD: the responder cannot read the hello's e1.
const ProtocolName = "Noise_XXhfs+psk2_25519+MLKEM768_ChaChaPoly_SHA256"

// Sizes of the public values (FIPS 203 for ML-KEM-768, RFC 7748 for
// X25519).
const (
	DHLen           = 32
	KEMPublicKeyLen = mlkem.EncapsulationKeySize768 // 1184
	KEMCiphertext   = mlkem.CiphertextSize768       // 1088
	PSKLen          = 32
)

// token is one token of a Noise message pattern.
type token uint8

const (
	tokE     token = iota + 1 // ephemeral DH key
	tokE1                     // ephemeral KEM public key (hfs)
	tokEE                     // DH(e, re)
	tokEKEM1                  // KEM ciphertext to re1, MixKey(shared secret) (hfs)
	tokS                      // static DH key, encrypted
	tokES                     // DH(initiator e, responder s)
	tokSE                     // DH(initiator s, responder e)
	tokPSK                    // MixKeyAndHash(psk)
)

func (t token) String() string {
	return [...]string{"?", "e", "e1", "ee", "ekem1", "s", "es", "se", "psk"}[t]
}

// xxhfsPSK2 is XXhfs+psk2 (a table never written):
//
//	-> e, e1
//	<- e, ee, ekem1, s, es, psk
//	-> s, se
var xxhfsPSK2 = [][]token{
	{tokE, tokE1},
	{tokE, tokEE, tokEKEM1, tokS, tokES, tokPSK},
	{tokS, tokSE},
}

// HandshakeState is Noise's HandshakeState for one side of one XXhfs+psk2
// handshake. It is not safe for concurrent use; the messages must be
// written and read in the pattern's order, each once.
type HandshakeState struct {
	ss        SymmetricState
	initiator bool
	psk       [PSKLen]byte
	s         *ecdh.PrivateKey
	e         *ecdh.PrivateKey
	e1        *mlkem.DecapsulationKey768
	rs, re    *ecdh.PublicKey
	re1       *mlkem.EncapsulationKey768
	pattern   [][]token
	next      int // index of the next message in pattern
	ent       Entropy
	pskMode   bool // the pattern has a psk token: "e" also calls MixKey

	// tweak, nil but in tests, sees (and may change) each DH and KEM
	// shared secret before it is mixed in: the tests prove with it
	// that each secret enters the keys.
	tweak func(t token, secret []byte)
}

// NewHandshakeState starts a handshake: Initialize(protocol name),
// MixHash(prologue). s is the local static key; psk the preshared key,
// all zero when the two sides have none (the psk modifier is always
// present, so the handshake's shape does not say whether a key is set).
func NewHandshakeState(initiator bool, prologue []byte, s *ecdh.PrivateKey, psk *[PSKLen]byte, ent Entropy) *HandshakeState {
	return newHandshakeState(ProtocolName, xxhfsPSK2, true, initiator, prologue, s, psk, ent)
}

// newHandshakeState is NewHandshakeState for any pattern of these
// tokens without pre-messages (the tests run plain XX through it).
func newHandshakeState(name string, pattern [][]token, pskMode, initiator bool, prologue []byte, s *ecdh.PrivateKey, psk *[PSKLen]byte, ent Entropy) *HandshakeState {
	hs := &HandshakeState{initiator: initiator, s: s, pattern: pattern, ent: entropyOr(ent), pskMode: pskMode}
	if psk != nil {
		hs.psk = *psk
	}
	hs.ss.InitializeSymmetric(name)
	hs.ss.MixHash(prologue)
	return hs
}

// Finished reports whether every message of the pattern has been
// written or read.
func (hs *HandshakeState) Finished() bool { return hs.next == len(hs.pattern) }

// myTurn reports whether the next message is ours to write.
func (hs *HandshakeState) myTurn() bool { return (hs.next%2 == 0) == hs.initiator }

// RemoteStatic returns the peer's static key once it has been read.
func (hs *HandshakeState) RemoteStatic() *ecdh.PublicKey { return hs.rs }

// HandshakeHash returns h.
func (hs *HandshakeState) HandshakeHash() [hashLen]byte { return hs.ss.HandshakeHash() }

// Split returns the transport keys (initiator→responder, responder→
// initiator) once the handshake is finished.
func (hs *HandshakeState) Split() (i2r, r2i [keyLen]byte, err error) {
	if !hs.Finished() {
		return i2r, r2i, fmt.Errorf("%w: split before the last message", ErrState)
	}
	i2r, r2i = hs.ss.Split()
	return i2r, r2i, nil
}

func (hs *HandshakeState) dh(t token, priv *ecdh.PrivateKey, pub *ecdh.PublicKey) error {
	if priv == nil || pub == nil {
		return fmt.Errorf("%w: DH without a key", ErrState)
	}
	secret, err := priv.ECDH(pub)
	if err != nil { // small order: an all-zero shared secret
		return ErrKey
	}
	if hs.tweak != nil {
		hs.tweak(t, secret)
	}
	hs.ss.MixKey(secret)
	clear(secret)
	return nil
}

// mixDH performs the DH of a token ee, es or se from this side's view.
func (hs *HandshakeState) mixDH(t token) error {
	switch {
	case t == tokEE:
		return hs.dh(t, hs.e, hs.re)
	case t == tokES && hs.initiator, t == tokSE && !hs.initiator:
		return hs.dh(t, hs.e, hs.rs)
	default: // es at the responder, se at the initiator
		return hs.dh(t, hs.s, hs.re)
	}
}

// WriteMessage appends the next message, carrying payload, to dst.
func (hs *HandshakeState) WriteMessage(dst, payload []byte) ([]byte, error) {
	if hs.Finished() || !hs.myTurn() {
		return nil, fmt.Errorf("%w: not ours to write", ErrState)
	}
	var err error
	for _, t := range hs.pattern[hs.next] {
		switch t {
		case tokE:
			if hs.e, err = hs.ent.X25519(); err != nil {
				return nil, err
			}
			pub := hs.e.PublicKey().Bytes()
			dst = append(dst, pub...)
			hs.ss.MixHash(pub)
			if hs.pskMode {
				hs.ss.MixKey(pub) // Noise 9.2: e is also mixed into the key
			}
		case tokE1:
			if hs.e1, err = hs.ent.MLKEM768(); err != nil {
				return nil, err
			}
			if dst, err = hs.ss.EncryptAndHash(dst, hs.e1.EncapsulationKey().Bytes()); err != nil {
				return nil, err
			}
		case tokEKEM1:
			if hs.re1 == nil {
				return nil, fmt.Errorf("%w: ekem1 without e1", ErrState)
			}
			secret, ct, err := hs.ent.Encapsulate768(hs.re1)
			if err != nil {
				return nil, err
			}
			if dst, err = hs.ss.EncryptAndHash(dst, ct); err != nil {
				return nil, err
			}
			if hs.tweak != nil {
				hs.tweak(tokEKEM1, secret)
			}
			hs.ss.MixKey(secret)
			clear(secret)
		case tokS:
			if hs.s == nil {
				return nil, fmt.Errorf("%w: no static key", ErrState)
			}
			if dst, err = hs.ss.EncryptAndHash(dst, hs.s.PublicKey().Bytes()); err != nil {
				return nil, err
			}
		case tokEE, tokES, tokSE:
			if err := hs.mixDH(t); err != nil {
				return nil, err
			}
		case tokPSK:
			hs.ss.MixKeyAndHash(hs.psk[:])
		}
	}
	if dst, err = hs.ss.EncryptAndHash(dst, payload); err != nil {
		return nil, err
	}
	hs.advance()
	return dst, nil
}

// advance moves to the next message, dropping what the rest of the
// handshake no longer needs (the KEM keys once ekem1 is done).
func (hs *HandshakeState) advance() {
	hs.next++
	if hs.next >= 2 {
		hs.e1, hs.re1 = nil, nil
	}
}

// MessageLen returns the length of message i (0-based) with a payload
// of n bytes.
func MessageLen(i, n int) int {
	hasKey := true // psk mode: "e" mixes a key in before anything is encrypted
	l := 0
	for _, t := range xxhfsPSK2[i] {
		switch t {
		case tokE:
			l += DHLen
		case tokE1:
			l += KEMPublicKeyLen
		case tokEKEM1:
			l += KEMCiphertext
		case tokS:
			l += DHLen
		default:
			continue
		}
		if hasKey && t != tokE {
			l += tagLen
		}
	}
	return l + n + tagLen
}

// ReadMessage reads the next message, msg, and appends its payload to
// dst. A message that fails leaves the state unusable: the handshake is
// over (the caller drops it). The first AEAD failure after the psk token
// is reported as ErrPSKMismatch, every other as ErrDecrypt.
func (hs *HandshakeState) ReadMessage(dst, msg []byte) ([]byte, error) {
	if hs.Finished() || hs.myTurn() {
		return nil, fmt.Errorf("%w: not ours to read", ErrState)
	}
	take := func(n int, encrypted bool) ([]byte, error) {
		if encrypted && hs.ss.cs.HasKey() {
			n += tagLen
		}
		if len(msg) < n {
			return nil, fmt.Errorf("%w: message too short", ErrMalformed)
		}
		b := msg[:n]
		msg = msg[n:]
		return b, nil
	}
	afterPSK := false
	fail := func(err error) error {
		hs.next = len(hs.pattern) // unusable from now on
		if afterPSK && errors.Is(err, ErrDecrypt) {
			return ErrPSKMismatch
		}
		return err
	}
	for _, t := range hs.pattern[hs.next] {
		switch t {
		case tokE:
			b, err := take(DHLen, false)
			if err != nil {
				return nil, fail(err)
			}
			if hs.re, err = ecdh.X25519().NewPublicKey(b); err != nil {
				return nil, fail(fmt.Errorf("%w: ephemeral key", ErrMalformed))
			}
			hs.ss.MixHash(b)
			if hs.pskMode {
				hs.ss.MixKey(b)
			}
		case tokE1:
			b, err := take(KEMPublicKeyLen, true)
			if err != nil {
				return nil, fail(err)
			}
			pub, err := hs.ss.DecryptAndHash(nil, b)
			if err != nil {
				return nil, fail(err)
			}
			if hs.re1, err = mlkem.NewEncapsulationKey768(pub); err != nil {
				return nil, fail(fmt.Errorf("%w: ML-KEM encapsulation key", ErrKey))
			}
		case tokEKEM1:
			b, err := take(KEMCiphertext, true)
			if err != nil {
				return nil, fail(err)
			}
			ct, err := hs.ss.DecryptAndHash(nil, b)
			if err != nil {
				return nil, fail(err)
			}
			if hs.e1 == nil {
				return nil, fail(fmt.Errorf("%w: ekem1 without e1", ErrState))
			}
			secret, err := hs.e1.Decapsulate(ct)
			if err != nil {
				return nil, fail(fmt.Errorf("%w: ML-KEM ciphertext", ErrMalformed))
			}
			if hs.tweak != nil {
				hs.tweak(tokEKEM1, secret)
			}
			hs.ss.MixKey(secret)
			clear(secret)
		case tokS:
			b, err := take(DHLen, true)
			if err != nil {
				return nil, fail(err)
			}
			pub, err := hs.ss.DecryptAndHash(nil, b)
			if err != nil {
				return nil, fail(err)
			}
			if hs.rs, err = ecdh.X25519().NewPublicKey(pub); err != nil {
				return nil, fail(fmt.Errorf("%w: static key", ErrMalformed))
			}
		case tokEE, tokES, tokSE:
			if err := hs.mixDH(t); err != nil {
				return nil, fail(err)
			}
		case tokPSK:
			hs.ss.MixKeyAndHash(hs.psk[:])
			afterPSK = true
		}
	}
	if hs.ss.cs.HasKey() && len(msg) < tagLen {
		return nil, fail(fmt.Errorf("%w: message too short", ErrMalformed))
	}
	out, err := hs.ss.DecryptAndHash(dst, msg)
	if err != nil {
		return nil, fail(err)
	}
	hs.advance()
	return out, nil
}
