package noise

import (
	"errors"
	"fmt"

	"github.com/vaultudp/vaultudp/internal/errs"
)

// Every error this package returns for received bytes wraps one of these
// sentinels, and each of them wraps errs.ErrMalformed or errs.ErrAuth, so
// that the Conn counts a refused handshake message by reason without
// knowing this package's errors.
var (
	// ErrMalformed: the bytes are not a message of this protocol (length,
	// type, reserved bytes, parameters).
	ErrMalformed = fmt.Errorf("noise: %w", errs.ErrMalformed)
	// ErrDecrypt: an AEAD in a handshake message failed: the message was
	// altered, answers another handshake, or was made by someone who does
	// not hold the keys it claims.
	ErrDecrypt = fmt.Errorf("noise: handshake message does not decrypt: %w", errs.ErrAuth)
	// ErrPSKMismatch: a reply decrypted up to the preshared key and not
	// after it. The two sides hold different preshared keys (one of them
	// may hold none), or an active attacker without the key, or without
	// the private key of the static key it sent, made or altered the
	// rest. Only the initiator can tell (PROTOCOL.md, section 9.6).
	ErrPSKMismatch = fmt.Errorf("noise: preshared keys differ: %w", errs.ErrAuth)
	// ErrSignature: the identity's signature over the Noise static key
	// does not verify.
	ErrSignature = fmt.Errorf("noise: identity signature does not verify: %w", errs.ErrAuth)
	// ErrReflected: the peer presents our own identity.
	ErrReflected = fmt.Errorf("noise: peer presents our own identity: %w", errs.ErrAuth)
	// ErrKey: a public key the peer sent is unusable (an X25519 point of
	// small order, whose shared secret is zero).
	ErrKey = fmt.Errorf("noise: unusable public key: %w", errs.ErrAuth)
	// ErrVersion: no common version, or the responder chose a lower
	// version than the highest both speak (a downgrade).
	ErrVersion = fmt.Errorf("noise: no acceptable protocol version: %w", errs.ErrAuth)
	// ErrTooLarge: the reply would be longer than the hello it answers
	// (the responder never sends more to an unproved address than it
	// received from it).
	ErrTooLarge = errors.New("noise: reply would exceed its hello")
	// ErrState: the handshake is not at a step where this call fits (a
	// second reply to a completed initiation, a second final message).
	ErrState = errors.New("noise: handshake state does not accept this message")
)
