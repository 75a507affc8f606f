package noise

import (
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rand"
)

// Entropy makes the handshake's random values. The Conn uses System; the
// known-answer tests pass one that derives every value from an io.Reader
// of fixed bytes, so that the vectors are reproducible byte for byte by
// another implementation (X25519 private keys, the 64-byte ML-KEM seed
// d || z, and the 32-byte encapsulation randomness m of FIPS 203 are all
// read from it).
type Entropy interface {
	// X25519 returns a fresh X25519 private key.
	X25519() (*ecdh.PrivateKey, error)
	// MLKEM768 returns a fresh ML-KEM-768 decapsulation key.
	MLKEM768() (*mlkem.DecapsulationKey768, error)
	// Encapsulate768 encapsulates a fresh shared secret to ek.
	Encapsulate768(ek *mlkem.EncapsulationKey768) (sharedKey, ciphertext []byte, err error)
}

// System is the Entropy of the operating system's secure random source.
type System struct{}

// X25519 implements Entropy.
func (System) X25519() (*ecdh.PrivateKey, error) { return ecdh.X25519().GenerateKey(rand.Reader) }

// MLKEM768 implements Entropy.
func (System) MLKEM768() (*mlkem.DecapsulationKey768, error) { return mlkem.GenerateKey768() }

// Encapsulate768 implements Entropy.
func (System) Encapsulate768(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
	k, ct := ek.Encapsulate()
	return k, ct, nil
}

func entropyOr(e Entropy) Entropy {
	if e == nil {
		return System{}
	}
	return e
}
