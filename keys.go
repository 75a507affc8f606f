package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// Identity keys in text: standard base64 of the raw bytes, as wg(8) writes
// its keys. A public key is the 32-byte Ed25519 public key (44 characters);
// a private key is the 32-byte Ed25519 seed (44 characters). A key file
// holds one private key and a newline.

// GenerateIdentity returns a new Ed25519 identity from crypto/rand.
func GenerateIdentity() ed25519.PrivateKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return priv
}

// EncodePublicKey returns the text form of a public key.
func EncodePublicKey(k ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(k)
}

// ParsePublicKey parses the text form of a public key. Surrounding spaces
// are ignored.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not base64: %v", ErrInvalidKey, err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key of %d bytes, want %d", ErrInvalidKey, len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// EncodePrivateKey returns the text form of a private key (its seed).
func EncodePrivateKey(k ed25519.PrivateKey) string {
	return base64.StdEncoding.EncodeToString(k.Seed())
}

// ParsePrivateKey parses the text form of a private key.
func ParsePrivateKey(s string) (ed25519.PrivateKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%w: private key is not base64", ErrInvalidKey)
	}
	if len(b) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: private key of %d bytes, want %d", ErrInvalidKey, len(b), ed25519.SeedSize)
	}
	k := ed25519.NewKeyFromSeed(b)
	clear(b)
	return k, nil
}

// WritePrivateKey writes k to a new file at path with mode 0600. It
// refuses to overwrite an existing file.
func WritePrivateKey(path string, k ed25519.PrivateKey) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(EncodePrivateKey(k) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// LoadPrivateKey reads a private key file written by WritePrivateKey (or
// `vaultudp keygen`). As ssh does, it refuses (ErrInvalidKey, with what
// to fix) a key that someone else may already know or may have chosen:
// a file that group or others may read or write; and, where files have
// owners (Unix), a file owned by another user than the caller or root,
// or one in a directory, or below one, that another user could change
// (owned by another user than the caller or root, or writable by group
// or others without the sticky bit), because whoever can rename files
// there can put their own key in its place.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o: group and others must have no access (chmod 600 %s)", ErrInvalidKey, path, perm, path)
	}
	if err := checkKeyOwners(path, fi); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, err
	}
	defer clear(buf.Bytes())
	k, err := ParsePrivateKey(buf.String())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
