package vaultudp

import (
	"errors"
	"net"
	"strconv"
	"syscall"

	"github.com/vaultudp/vaultudp/internal/errs"
)

// Sentinel errors. Errors returned by this package wrap one of these with
// the detail (sizes, addresses) so callers test them with errors.Is.
var (
	// ErrMessageTooLarge is returned by WriteTo and its relatives when a
	// datagram is larger than MaxPayload. Nothing is cut: the datagram is
	// not sent. The returned error also matches syscall.EMSGSIZE, as the
	// error of a UDP socket does, because consumers such as quic-go look
	// for that.
	ErrMessageTooLarge = errors.New("vaultudp: message too large")

	// ErrHandshakeTimeout is returned by Handshake when its attempt does
	// not complete within Config.HandshakeTimeout. Writes never return
	// it: a datagram written in the back-off after a failed attempt is
	// dropped and counted (Drops.WriteBackoff), as a UDP socket drops
	// what it cannot send.
	ErrHandshakeTimeout = errors.New("vaultudp: handshake timed out")

	// ErrPeerRejected is returned by Handshake, and by writes until the
	// next attempt, when the trust rules refused the peer's key: a pinned
	// key that does not match, a key Config.VerifyPeer refused, or an
	// address whose remembered key (trust on first use) differs. The error
	// names both keys; PeerInfo.LastFailure keeps it, Drops.Rejected
	// counts it.
	ErrPeerRejected = errors.New("vaultudp: peer rejected")

	// ErrPresharedKey is returned by Handshake and Dial, and by writes
	// until the next attempt, when the peer's reply decrypted up to the
	// preshared key and not after it: the two sides hold different
	// preshared keys (or one holds none), or an attacker without the key
	// made the reply. The error also matches ErrPeerRejected (a refusal
	// that lasts); Drops.PresharedKey counts it. Only the dialing side
	// can tell: the other sees its reply go unanswered.
	ErrPresharedKey = errors.New("vaultudp: preshared keys differ")

	// ErrNoSession is returned by Handshake when no session can be made or
	// waited for: the peer's policy forbids the handshake (a Plaintext
	// peer), or Config.MaxPeers learned peers exist already; and by a
	// write whose session's counters are used up (2^64 datagrams).
	ErrNoSession = errors.New("vaultudp: no session with peer")

	// ErrUnknownPeer is returned by RemovePeer for an address that is not
	// a peer, and by Handshake when the peer is dropped (removed,
	// replaced or forgotten) while it waits.
	ErrUnknownPeer = errors.New("vaultudp: unknown peer")

	// ErrInvalidConfig is returned by Listen, Wrap and AddPeer when a
	// Config or PeerConfig field holds a value outside its documented
	// range (or a peer is added twice), by ParsePolicy for an unknown
	// name, and by Rebind on a Conn made by Wrap.
	ErrInvalidConfig = errors.New("vaultudp: invalid config")

	// ErrInvalidKey is returned when a key cannot be parsed or loaded, or
	// a key file is readable by group or others.
	ErrInvalidKey = errors.New("vaultudp: invalid key")

	// ErrClosed is net.ErrClosed: operations on a closed Conn return
	// errors that wrap it.
	ErrClosed = net.ErrClosed
)

// Errors of received data. They never reach ReadFrom (a bad datagram is
// dropped and counted, as consumers such as quic-go stop on read errors);
// they are returned by the decoding functions and used in tests and logs.
var (
	errMalformed = errs.ErrMalformed // shared with the internal packages
	errTooLarge  = errs.ErrTooLarge
	errAuth      = errs.ErrAuth
	errReplay    = errs.ErrReplay

	errSessionsExpired = errors.New("vaultudp: its sessions expired")
	errSendQueueFull   = errors.New("vaultudp: send queue full")
)

// tooLargeError is the error of a datagram over MaxPayload. It matches
// both ErrMessageTooLarge and syscall.EMSGSIZE.
type tooLargeError struct {
	n, max int
}

func (e *tooLargeError) Error() string {
	return ErrMessageTooLarge.Error() + ": " + strconv.Itoa(e.n) + " bytes > " + strconv.Itoa(e.max)
}

func (e *tooLargeError) Is(target error) bool {
	return target == ErrMessageTooLarge || target == syscall.EMSGSIZE
}

// timeoutError is a handshake's timeout: it wraps ErrHandshakeTimeout
// (and the reason, if any) and is a net.Error whose Timeout is true, as
// the timeouts of the net package are, so that Dial's *net.OpError
// reports Timeout() too.
type timeoutError struct{ err error }

func (e *timeoutError) Error() string   { return e.err.Error() }
func (e *timeoutError) Unwrap() error   { return e.err }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
