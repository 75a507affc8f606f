package noise

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"fmt"
)

// StaticSignaturePrefix is signed before the Noise static key: an
// identity's signature binds it to the static key of one handshake (as
// libp2p's Noise handshake signs "noise-libp2p-static-key:" || static).
// The prefix is this protocol's own, so that a signature made for
// another protocol under the same Ed25519 key is never valid here.
const StaticSignaturePrefix = "vaultudp/4 static key\x00"

// identityBlockLen is the identity public key and its signature, the
// start of the reply's and the final message's payloads (after the
// reply's index).
const identityBlockLen = ed25519.PublicKeySize + ed25519.SignatureSize

// Static is the Noise static key of one side of a handshake, with the
// identity's signature over it. The Conn makes a fresh one for every
// handshake (NewStatic), so that the static key links nothing: it is
// used once, it is seen only encrypted, and a leak of its private key
// after the handshake gives nothing (PROTOCOL.md, section 9.5).
type Static struct {
	key      *ecdh.PrivateKey
	identity ed25519.PublicKey
	sig      [ed25519.SignatureSize]byte
}

// NewStatic makes a static key with ent and signs it with identity.
func NewStatic(identity ed25519.PrivateKey, ent Entropy) (*Static, error) {
	if len(identity) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("noise: identity key of %d bytes", len(identity))
	}
	k, err := entropyOr(ent).X25519()
	if err != nil {
		return nil, err
	}
	s := &Static{key: k, identity: identity.Public().(ed25519.PublicKey)}
	msg := append([]byte(StaticSignaturePrefix), k.PublicKey().Bytes()...)
	copy(s.sig[:], ed25519.Sign(identity, msg))
	return s, nil
}

// Identity returns the identity public key that signed the static key.
func (s *Static) Identity() ed25519.PublicKey { return s.identity }

// appendIdentity appends the identity block: identity key, signature.
func (s *Static) appendIdentity(dst []byte) []byte {
	dst = append(dst, s.identity...)
	return append(dst, s.sig[:]...)
}

// verifyIdentity checks an identity block against the static key the
// peer sent, and returns a copy of the identity key.
func verifyIdentity(block []byte, static *ecdh.PublicKey) (ed25519.PublicKey, error) {
	if len(block) < identityBlockLen || static == nil {
		return nil, fmt.Errorf("%w: identity block", ErrMalformed)
	}
	id := ed25519.PublicKey(block[:ed25519.PublicKeySize])
	sig := block[ed25519.PublicKeySize:identityBlockLen]
	msg := append([]byte(StaticSignaturePrefix), static.Bytes()...)
	if !ed25519.Verify(id, msg, sig) {
		return nil, ErrSignature
	}
	return append(ed25519.PublicKey(nil), id...), nil
}
