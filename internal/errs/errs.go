// Package errs holds the sentinel errors of received data that the root
// package and its internal packages share: each error they return for a
// bad datagram wraps one of these, so that the Conn counts it by reason.
package errs

import "errors"

var (
	// ErrMalformed: not a well-formed datagram of the protocol.
	ErrMalformed = errors.New("vaultudp: malformed datagram")
	// ErrTooLarge: a payload that would decompress past its bound.
	ErrTooLarge = errors.New("vaultudp: decompressed payload too large")
	// ErrAuth: authentication failed (tag, signature, key).
	ErrAuth = errors.New("vaultudp: authentication failed")
	// ErrReplay: replayed, or outside the freshness window.
	ErrReplay = errors.New("vaultudp: replayed or too old counter")
)
