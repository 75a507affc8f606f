package noise

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
)

// The v4 handshake datagrams (PROTOCOL.md section 9 gives every byte).
// Each starts as every datagram of the protocol does, version then type,
// and maps one Noise message onto one of vaultudp's three flights:
//
//	hello  (initiator → responder): Noise message 1, padded, then a cookie
//	  0  version = 4
//	  1  type = 0x04
//	  2  reserved, 2 zero bytes
//	  4  sender index     uint32: the initiator's index
//	  8  n                1..8
//	  9  versions         n bytes
//	  .. message 1        e (32) || e1 encrypted (1184+16) || payload encrypted (zeros, P+16)
//	  .. cookie           16 bytes: zeros or the responder's cookie, outside the transcript
//	  prologue = bytes 0 .. 9+n (the whole clear header)
//
//	reply  (responder → initiator): Noise message 2
//	  0  version = 4, 1 type = 0x05, 2 reserved (2)
//	  4  receiver index   uint32: the hello's sender index
//	  8  message 2        e (32) || ekem1 ct (1088+16) || s (32+16) || payload (+16)
//	  payload = responder index (4) || identity (32) || signature (64) || parameters
//
//	final  (initiator → responder): Noise message 3, then perhaps the
//	  initiator's first sealed datagram, coalesced
//	  0  version = 4, 1 type = 0x07
//	  2  length of message 3, uint16
//	  4  receiver index   uint32: the responder's index (from the reply)
//	  8  message 3        s (32+16) || payload (+16)
//	  .. sealed datagram  optional, PROTOCOL.md 2.3, to the end
//	  payload = identity (32) || signature (64) || parameters
//
//	cookie (responder → initiator, under load), 24 bytes
//	  0  version = 4, 1 type = 0x06, 2 reserved (2)
//	  4  receiver index   uint32: the hello's sender index
//	  8  cookie           16 bytes
const (
	// Version is the protocol version whose handshake this package
	// speaks: byte 0 of its datagrams.
	Version = 4

	TypeHello  = 0x04
	TypeReply  = 0x05
	TypeCookie = 0x06
	TypeFinal  = 0x07

	// CookieLen is the length of a cookie.
	CookieLen = 16
	// HelloLen is the length of the hellos this implementation sends,
	// and the least a responder accepts: at least every reply (1337
	// bytes here), so that a reply never exceeds its hello, with room
	// for 23 more bytes of parameters; and at most 1372 bytes, the
	// datagram an IPv6 path through a 1420-byte tunnel carries whole.
	HelloLen = 1360
	// CookieMsgLen is the length of a cookie datagram.
	CookieMsgLen = 8 + CookieLen

	headerLen     = 8
	maxDatagram   = 65507 // the largest UDP payload over IPv4
	helloFixedLen = 9     // up to the version list
	replyIndexLen = 4
)

// Keys are the outcome of a completed handshake: one key per direction
// (Split) and the handshake hash h, which names the session.
type Keys struct {
	I2R, R2I [keyLen]byte
	Hash     [hashLen]byte
}

// Peer is what a handshake message revealed about the other side, once
// its signature and encryption checked out. The caller applies its
// trust rules to Identity before it uses the session.
type Peer struct {
	Identity ed25519.PublicKey // a copy
	Params   Params
	// Index is the peer's session index: the responder's, from the
	// reply (the initiator seals to it); zero in a final message's
	// result (the responder has it from the hello).
	Index uint32
}

// highestCommon returns the highest version in both lists, or 0.
func highestCommon(ours, theirs []byte) byte {
	var best byte
	for _, v := range ours {
		if v > best && bytes.IndexByte(theirs, v) >= 0 {
			best = v
		}
	}
	return best
}

func checkVersions(v []byte) error {
	if len(v) == 0 || len(v) > maxVersions {
		return fmt.Errorf("noise: %d versions (1..%d)", len(v), maxVersions)
	}
	return nil
}

// InitiatorConfig is what an initiator needs for one hello.
type InitiatorConfig struct {
	Static   *Static       // fresh per handshake (NewStatic)
	Index    uint32        // the initiator's session index, never 0
	Versions []byte        // spoken, 1..8; nil: [Version]
	PSK      *[PSKLen]byte // nil: none (32 zero bytes)
	HelloLen int           // 0: HelloLen; else HelloLen..65507 (a larger hello, for a path that must be probed)
	Entropy  Entropy       // nil: System
}

// Initiation is an initiator's handshake from its hello until its
// final message. Its methods are not safe for concurrent use.
type Initiation struct {
	hs       *HandshakeState
	hello    []byte
	index    uint32
	versions []byte
	static   *Static
	peer     *Peer // set by ReadReply
}

// NewInitiation makes the hello of a new handshake: it generates the
// ephemeral X25519 and ML-KEM-768 keys.
func NewInitiation(cfg InitiatorConfig) (*Initiation, error) {
	versions := cfg.Versions
	if versions == nil {
		versions = []byte{Version}
	}
	if err := checkVersions(versions); err != nil {
		return nil, err
	}
	if cfg.Static == nil || cfg.Index == 0 {
		return nil, fmt.Errorf("%w: initiation without a static key or index", ErrState)
	}
	helloLen := cfg.HelloLen
	if helloLen == 0 {
		helloLen = HelloLen
	}
	if helloLen < HelloLen || helloLen > maxDatagram {
		return nil, fmt.Errorf("noise: hello of %d bytes (%d..%d): responders refuse shorter ones", helloLen, HelloLen, maxDatagram)
	}
	head := helloFixedLen + len(versions)
	pad := helloLen - head - MessageLen(0, 0) - CookieLen
	if pad < 0 { // cannot happen: HelloLen holds 8 versions
		return nil, fmt.Errorf("noise: hello of %d bytes is too short for its fields", helloLen)
	}
	hello := make([]byte, head, helloLen)
	hello[0], hello[1] = Version, TypeHello
	binary.BigEndian.PutUint32(hello[4:], cfg.Index)
	hello[8] = byte(len(versions))
	copy(hello[9:], versions)
	hs := NewHandshakeState(true, hello[:head], cfg.Static.key, cfg.PSK, cfg.Entropy)
	hello, err := hs.WriteMessage(hello, make([]byte, pad))
	if err != nil {
		return nil, err
	}
	hello = append(hello, make([]byte, CookieLen)...)
	return &Initiation{
		hs: hs, hello: hello, index: cfg.Index,
		versions: append([]byte(nil), versions...), static: cfg.Static,
	}, nil
}

// Hello returns the hello datagram, cookie included. The slice is the
// Initiation's: SetCookie changes it.
func (i *Initiation) Hello() []byte { return i.hello }

// Index returns the initiator's session index.
func (i *Initiation) Index() uint32 { return i.index }

// Cookie returns the hello's cookie field.
func (i *Initiation) Cookie() []byte { return i.hello[len(i.hello)-CookieLen:] }

// SetCookie copies a responder's cookie into the hello. The cookie is
// outside the transcript: the hello is otherwise the same.
func (i *Initiation) SetCookie(c []byte) { copy(i.Cookie(), c) }

// ReadReply checks a reply datagram against this initiation. On success
// it returns what the reply revealed of the responder (its identity,
// index and parameters; the caller applies trust rules to the identity),
// and the initiation waits for WriteFinal. On failure the initiation is
// unchanged, so a forged reply cannot end it; ErrPSKMismatch says that
// the reply was genuine up to the preshared key.
func (i *Initiation) ReadReply(reply []byte) (*Peer, error) {
	if i.peer != nil || i.hs.next != 1 {
		return nil, fmt.Errorf("%w: reply to a completed initiation", ErrState)
	}
	idx, msg, err := parseReply(reply)
	if err != nil {
		return nil, err
	}
	if idx != i.index {
		return nil, fmt.Errorf("%w: reply for index %d, ours is %d", ErrState, idx, i.index)
	}
	trial := *i.hs
	payload, err := trial.ReadMessage(nil, msg)
	if err != nil {
		return nil, err
	}
	if len(payload) < replyIndexLen+identityBlockLen {
		return nil, fmt.Errorf("%w: reply payload of %d bytes", ErrMalformed, len(payload))
	}
	remote := binary.BigEndian.Uint32(payload)
	if remote == 0 {
		return nil, fmt.Errorf("%w: responder index 0", ErrMalformed)
	}
	id, err := verifyIdentity(payload[replyIndexLen:], trial.RemoteStatic())
	if err != nil {
		return nil, err
	}
	if id.Equal(i.static.identity) {
		return nil, ErrReflected
	}
	params, err := parseParams(payload[replyIndexLen+identityBlockLen:])
	if err != nil {
		return nil, err
	}
	// Both lists are authenticated: ours by the prologue, the
	// responder's by the payload. This reply is in version 4's format,
	// so 4 must be the highest version both speak.
	if len(params.Versions) == 0 {
		return nil, fmt.Errorf("%w: reply without versions", ErrMalformed)
	}
	if highestCommon(i.versions, params.Versions) != Version {
		return nil, fmt.Errorf("%w: we speak %v, the responder %v", ErrVersion, i.versions, params.Versions)
	}
	*i.hs = trial
	i.peer = &Peer{Identity: id, Params: params, Index: remote}
	return i.peer, nil
}

// WriteFinal makes the final datagram with the initiator's parameters,
// after the caller accepted the responder's identity, and returns it
// with the session's keys. The caller may append one sealed datagram
// (PROTOCOL.md 2.3, sealed with keys.I2R) to final, coalesced after
// message 3; ParseFinal hands it back to the responder as Final.Sealed.
// The initiation is then over; the caller keeps final (message 3 alone,
// or with a sealed datagram already sent) to send again until the
// responder confirms.
func (i *Initiation) WriteFinal(params *Params) (final []byte, keys *Keys, err error) {
	if i.peer == nil || i.hs.next != 2 {
		return nil, nil, fmt.Errorf("%w: final message before a reply", ErrState)
	}
	payload := i.static.appendIdentity(make([]byte, 0, identityBlockLen+16))
	payload = appendParams(payload, params)
	final = make([]byte, headerLen, headerLen+MessageLen(2, len(payload)))
	final[0], final[1] = Version, TypeFinal
	binary.BigEndian.PutUint32(final[4:], i.peer.Index)
	if final, err = i.hs.WriteMessage(final, payload); err != nil {
		return nil, nil, err
	}
	binary.BigEndian.PutUint16(final[2:], uint16(len(final)-headerLen))
	k := &Keys{Hash: i.hs.HandshakeHash()}
	if k.I2R, k.R2I, err = i.hs.Split(); err != nil {
		return nil, nil, err
	}
	return final, k, nil
}

// Hello is a parsed hello datagram: its clear fields, checked for
// structure only (ParseHello does no cryptography, so that a responder
// under load checks the cookie before any costly work).
type Hello struct {
	SenderIndex uint32
	Versions    []byte // aliases the datagram
	Cookie      []byte // aliases the datagram
	prologue    []byte
	msg         []byte
}

// ParseHello parses a hello datagram. It refuses hellos shorter than
// HelloLen: a reply is never longer than the hello it answers, and
// this implementation's replies need that much. The Hello aliases b:
// the caller keeps b unchanged until Respond has returned.
func ParseHello(b []byte) (*Hello, error) {
	if len(b) < HelloLen || b[0] != Version || b[1] != TypeHello || b[2] != 0 || b[3] != 0 {
		return nil, fmt.Errorf("%w: not a hello of %d bytes or more", ErrMalformed, HelloLen)
	}
	n := int(b[8])
	if n == 0 || n > maxVersions {
		return nil, fmt.Errorf("%w: hello with %d versions", ErrMalformed, n)
	}
	head := helloFixedLen + n
	if len(b) < head+MessageLen(0, 0)+CookieLen {
		return nil, fmt.Errorf("%w: hello too short", ErrMalformed)
	}
	idx := binary.BigEndian.Uint32(b[4:])
	if idx == 0 {
		return nil, fmt.Errorf("%w: hello with index 0", ErrMalformed)
	}
	return &Hello{
		SenderIndex: idx,
		Versions:    b[9:head],
		Cookie:      b[len(b)-CookieLen:],
		prologue:    b[:head],
		msg:         b[head : len(b)-CookieLen],
	}, nil
}

// Ephemeral returns the initiator's ephemeral X25519 public key, the
// first 32 bytes of message 1: crossed hellos are settled by comparing
// the two sides' (PROTOCOL.md 9.8), since a hello names no identity.
func (h *Hello) Ephemeral() []byte { return h.msg[:DHLen] }

// Ephemeral returns the initiation's ephemeral X25519 public key.
func (i *Initiation) Ephemeral() []byte {
	return i.hello[helloFixedLen+len(i.versions):][:DHLen]
}

// KeepsInitiating settles crossed hellos: when both sides sent a hello
// at once, the side whose own hello's ephemeral key is greater (as
// unsigned bytes from the first) keeps its initiation and ignores the
// other's hello; the other side answers it. Both sides compare the same
// two keys, so they agree (PROTOCOL.md 9.9).
func (i *Initiation) KeepsInitiating(theirs *Hello) bool {
	return bytes.Compare(i.Ephemeral(), theirs.Ephemeral()) > 0
}

// ResponderConfig is what a responder needs to answer one hello.
type ResponderConfig struct {
	Static   *Static       // fresh per handshake (NewStatic)
	Index    uint32        // the responder's session index, never 0
	Versions []byte        // spoken, 1..8; nil: [Version]
	PSK      *[PSKLen]byte // nil: none; chosen by the hello's source address
	Params   Params        // the responder's; Versions is filled in
	Entropy  Entropy       // nil: System
}

// Response is a responder's handshake from its reply until the final
// message. Its methods are not safe for concurrent use.
type Response struct {
	hs          *HandshakeState
	index       uint32
	remoteIndex uint32
	static      *Static
	done        bool
}

// Respond answers a parsed hello: it reads message 1 and writes the
// reply, which is never longer than the hello. This is the responder's
// costly step (an X25519 key, an encapsulation, two DH): a responder
// under load calls it only for hellos with a valid cookie.
func Respond(h *Hello, cfg ResponderConfig) (*Response, []byte, error) {
	versions := cfg.Versions
	if versions == nil {
		versions = []byte{Version}
	}
	if err := checkVersions(versions); err != nil {
		return nil, nil, err
	}
	if cfg.Static == nil || cfg.Index == 0 {
		return nil, nil, fmt.Errorf("%w: response without a static key or index", ErrState)
	}
	if highestCommon(versions, h.Versions) != Version {
		return nil, nil, fmt.Errorf("%w: we speak %v, the initiator %v", ErrVersion, versions, h.Versions)
	}
	hs := NewHandshakeState(false, h.prologue, cfg.Static.key, cfg.PSK, cfg.Entropy)
	if _, err := hs.ReadMessage(nil, h.msg); err != nil {
		return nil, nil, err
	}
	params := cfg.Params
	params.Versions = versions
	payload := make([]byte, replyIndexLen, replyIndexLen+identityBlockLen+paramsLen(&params))
	binary.BigEndian.PutUint32(payload, cfg.Index)
	payload = cfg.Static.appendIdentity(payload)
	payload = appendParams(payload, &params)
	total := headerLen + MessageLen(1, len(payload))
	if total > len(h.prologue)+len(h.msg)+CookieLen {
		return nil, nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, total)
	}
	reply := make([]byte, headerLen, total)
	reply[0], reply[1] = Version, TypeReply
	binary.BigEndian.PutUint32(reply[4:], h.SenderIndex)
	reply, err := hs.WriteMessage(reply, payload)
	if err != nil {
		return nil, nil, err
	}
	return &Response{hs: hs, index: cfg.Index, remoteIndex: h.SenderIndex, static: cfg.Static}, reply, nil
}

// Index returns the responder's session index.
func (r *Response) Index() uint32 { return r.index }

// RemoteIndex returns the initiator's session index.
func (r *Response) RemoteIndex() uint32 { return r.remoteIndex }

// parseReply splits a reply datagram into its receiver index and Noise
// message 2.
func parseReply(b []byte) (uint32, []byte, error) {
	min := headerLen + MessageLen(1, replyIndexLen+identityBlockLen)
	if len(b) < min || b[0] != Version || b[1] != TypeReply || b[2] != 0 || b[3] != 0 {
		return 0, nil, fmt.Errorf("%w: not a reply", ErrMalformed)
	}
	return binary.BigEndian.Uint32(b[4:]), b[headerLen:], nil
}

// ReplyIndex returns the receiver index of a reply datagram (the
// initiator's index), to find the initiation it answers.
func ReplyIndex(b []byte) (uint32, error) {
	idx, _, err := parseReply(b)
	return idx, err
}

// Final is a parsed final datagram.
type Final struct {
	ReceiverIndex uint32 // the responder's index
	// Sealed is the sealed datagram coalesced after message 3, or
	// empty; it aliases the datagram.
	Sealed []byte
	msg    []byte
}

// ParseFinal parses a final datagram's structure. The Final aliases b:
// the caller keeps b unchanged until ReadFinal has returned and it has
// read Sealed.
func ParseFinal(b []byte) (*Final, error) {
	if len(b) < headerLen || b[0] != Version || b[1] != TypeFinal {
		return nil, fmt.Errorf("%w: not a final message", ErrMalformed)
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if n < MessageLen(2, identityBlockLen) || headerLen+n > len(b) {
		return nil, fmt.Errorf("%w: final message of %d bytes in %d", ErrMalformed, n, len(b))
	}
	return &Final{
		ReceiverIndex: binary.BigEndian.Uint32(b[4:]),
		Sealed:        b[headerLen+n:],
		msg:           b[headerLen : headerLen+n],
	}, nil
}

// ReadFinal reads the final message of this response. On success it
// returns the initiator's identity and parameters (the caller applies
// trust rules before it uses the session) and the keys; the response
// is then over, and a second final message fails with ErrState. On
// failure the response is unchanged.
func (r *Response) ReadFinal(f *Final) (*Peer, *Keys, error) {
	if r.done || r.hs.next != 2 {
		return nil, nil, fmt.Errorf("%w: final message for a completed response", ErrState)
	}
	if f.ReceiverIndex != r.index {
		return nil, nil, fmt.Errorf("%w: final message for index %d, ours is %d", ErrState, f.ReceiverIndex, r.index)
	}
	trial := *r.hs
	payload, err := trial.ReadMessage(nil, f.msg)
	if err != nil {
		return nil, nil, err
	}
	id, err := verifyIdentity(payload, trial.RemoteStatic())
	if err != nil {
		return nil, nil, err
	}
	if id.Equal(r.static.identity) {
		return nil, nil, ErrReflected
	}
	params, err := parseParams(payload[identityBlockLen:])
	if err != nil {
		return nil, nil, err
	}
	k := &Keys{Hash: trial.HandshakeHash()}
	if k.I2R, k.R2I, err = trial.Split(); err != nil {
		return nil, nil, err
	}
	*r.hs = trial
	r.done = true
	return &Peer{Identity: id, Params: params}, k, nil
}

// CookieMsg returns a cookie datagram answering the hello whose sender
// index is receiverIndex.
func CookieMsg(receiverIndex uint32, cookie []byte) []byte {
	b := make([]byte, CookieMsgLen)
	b[0], b[1] = Version, TypeCookie
	binary.BigEndian.PutUint32(b[4:], receiverIndex)
	copy(b[8:], cookie)
	return b
}

// ParseCookie parses a cookie datagram.
func ParseCookie(b []byte) (receiverIndex uint32, cookie []byte, err error) {
	if len(b) != CookieMsgLen || b[0] != Version || b[1] != TypeCookie || b[2] != 0 || b[3] != 0 {
		return 0, nil, fmt.Errorf("%w: not a cookie message", ErrMalformed)
	}
	return binary.BigEndian.Uint32(b[4:]), b[8:], nil
}
