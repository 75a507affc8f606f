package noise

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"math"

	"golang.org/x/crypto/chacha20poly1305"
)

// The Noise objects of the specification's section 5, for the cipher
// ChaChaPoly and the hash SHA256 (HASHLEN 32). Names follow the
// specification so that a reader can hold the two side by side.

const (
	hashLen = sha256.Size
	keyLen  = chacha20poly1305.KeySize
	tagLen  = chacha20poly1305.Overhead
)

// CipherState is Noise's CipherState: a key (or none) and a nonce.
// With no key, EncryptWithAd and DecryptWithAd return their input
// unchanged, as the specification says.
type CipherState struct {
	aead   cipher.AEAD // nil: no key
	n      uint64
	nonce  [chacha20poly1305.NonceSize]byte
	hasKey bool
}

// InitializeKey sets the key k and the nonce 0.
func (c *CipherState) InitializeKey(k *[keyLen]byte) {
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		panic(err) // a 32-byte key: cannot happen
	}
	c.aead, c.n, c.hasKey = aead, 0, true
}

// HasKey reports whether a key is set.
func (c *CipherState) HasKey() bool { return c.hasKey }

// nextNonce fills the ChaChaPoly nonce for n: 4 zero bytes, then n as
// 64 bits little endian (Noise section 12.3). The nonce 2^64-1 is
// reserved and never used.
func (c *CipherState) nextNonce() error {
	if c.n == math.MaxUint64 {
		return fmt.Errorf("%w: nonce exhausted", ErrState)
	}
	binary.LittleEndian.PutUint64(c.nonce[4:], c.n)
	return nil
}

// EncryptWithAd appends the encryption of plaintext under ad to dst.
func (c *CipherState) EncryptWithAd(dst, ad, plaintext []byte) ([]byte, error) {
	if !c.hasKey {
		return append(dst, plaintext...), nil
	}
	if err := c.nextNonce(); err != nil {
		return nil, err
	}
	out := c.aead.Seal(dst, c.nonce[:], plaintext, ad)
	c.n++
	return out, nil
}

// DecryptWithAd appends the decryption of ciphertext under ad to dst. A
// failed authentication leaves the nonce unchanged and returns an error
// wrapping ErrDecrypt.
func (c *CipherState) DecryptWithAd(dst, ad, ciphertext []byte) ([]byte, error) {
	if !c.hasKey {
		return append(dst, ciphertext...), nil
	}
	if err := c.nextNonce(); err != nil {
		return nil, err
	}
	out, err := c.aead.Open(dst, c.nonce[:], ciphertext, ad)
	if err != nil {
		return nil, ErrDecrypt
	}
	c.n++
	return out, nil
}

// SymmetricState is Noise's SymmetricState: a CipherState, the chaining
// key ck and the handshake hash h.
type SymmetricState struct {
	cs CipherState
	ck [hashLen]byte
	h  [hashLen]byte
}

// InitializeSymmetric starts from the protocol name: h is the name
// padded with zeros if it fits HASHLEN, else its hash; ck = h; no key.
func (s *SymmetricState) InitializeSymmetric(protocolName string) {
	if len(protocolName) <= hashLen {
		s.h = [hashLen]byte{}
		copy(s.h[:], protocolName)
	} else {
		s.h = sha256.Sum256([]byte(protocolName))
	}
	s.ck = s.h
	s.cs = CipherState{}
}

// MixKey mixes input key material into ck and sets a new key.
func (s *SymmetricState) MixKey(ikm []byte) {
	var k [keyLen]byte
	hkdf(&s.ck, ikm, &s.ck, &k, nil)
	s.cs.InitializeKey(&k)
	clear(k[:])
}

// MixHash sets h = HASH(h || data).
func (s *SymmetricState) MixHash(data []byte) {
	d := sha256.New()
	d.Write(s.h[:])
	d.Write(data)
	d.Sum(s.h[:0])
}

// MixKeyAndHash mixes ikm into ck, h and a new key (the psk token).
func (s *SymmetricState) MixKeyAndHash(ikm []byte) {
	var th [hashLen]byte
	var k [keyLen]byte
	hkdf(&s.ck, ikm, &s.ck, &th, &k)
	s.MixHash(th[:])
	s.cs.InitializeKey(&k)
	clear(k[:])
}

// HandshakeHash returns h, which names the handshake (channel binding).
func (s *SymmetricState) HandshakeHash() [hashLen]byte { return s.h }

// EncryptAndHash appends EncryptWithAd(h, plaintext) to dst and mixes
// the ciphertext into h.
func (s *SymmetricState) EncryptAndHash(dst, plaintext []byte) ([]byte, error) {
	n := len(dst)
	out, err := s.cs.EncryptWithAd(dst, s.h[:], plaintext)
	if err != nil {
		return nil, err
	}
	s.MixHash(out[n:])
	return out, nil
}

// DecryptAndHash appends DecryptWithAd(h, ciphertext) to dst and mixes
// the ciphertext into h. On failure h is unchanged.
func (s *SymmetricState) DecryptAndHash(dst, ciphertext []byte) ([]byte, error) {
	out, err := s.cs.DecryptWithAd(dst, s.h[:], ciphertext)
	if err != nil {
		return nil, err
	}
	s.MixHash(ciphertext)
	return out, nil
}

// Split returns the two transport keys: the first for initiator to
// responder, the second for responder to initiator. Noise's Split
// returns CipherStates; this protocol seals with its own explicit
// counter (PROTOCOL.md, section 2.3), so it takes the keys.
func (s *SymmetricState) Split() (k1, k2 [keyLen]byte) {
	hkdf(&s.ck, nil, &k1, &k2, nil)
	return k1, k2
}

// hkdf is Noise's HKDF(chaining_key, input_key_material, n) with
// HMAC-SHA256, writing out1, out2 and, if out3 is not nil, out3 (which
// is RFC 5869 HKDF with salt ck and empty info). Outputs may alias ck.
func hkdf(ck *[hashLen]byte, ikm []byte, out1, out2, out3 *[hashLen]byte) {
	var temp [hashLen]byte
	hmacSum(&temp, ck[:], ikm)
	var o1, o2 [hashLen]byte
	hmacSum(&o1, temp[:], []byte{1})
	hmacSum(&o2, temp[:], o1[:], []byte{2})
	if out3 != nil {
		hmacSum(out3, temp[:], o2[:], []byte{3})
	}
	*out1, *out2 = o1, o2
	clear(temp[:])
	clear(o1[:])
	clear(o2[:])
}

// hmacSum writes HMAC-SHA256(key, data...) to out. A handshake takes
// some thirty of them, each over a 32-byte key and a few dozen bytes:
// hmac.New allocates two digests and pads the key for each, about 1.5 µs,
// where the two hashes of RFC 2104 over buffers on the stack take a third
// of that (TestHMACSum checks it against crypto/hmac). Longer input goes
// to crypto/hmac.
func hmacSum(out *[hashLen]byte, key []byte, data ...[]byte) {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	var in [sha256.BlockSize + hmacInline]byte
	if len(key) > sha256.BlockSize || n > hmacInline {
		var m hash.Hash = hmac.New(sha256.New, key)
		for _, d := range data {
			m.Write(d)
		}
		m.Sum(out[:0])
		return
	}
	var o [sha256.BlockSize + sha256.Size]byte
	copy(in[:], key)
	copy(o[:], key)
	for i := range sha256.BlockSize {
		in[i] ^= 0x36
		o[i] ^= 0x5c
	}
	off := sha256.BlockSize
	for _, d := range data {
		off += copy(in[off:], d)
	}
	inner := sha256.Sum256(in[:off])
	copy(o[sha256.BlockSize:], inner[:])
	*out = sha256.Sum256(o[:])
	clear(in[:])
	clear(o[:])
	clear(inner[:])
}

// hmacInline is the most input hmacSum hashes on the stack.
const hmacInline = 128
