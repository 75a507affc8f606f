package v2

// Protocol v2: the wire format of the Python reference (py-vault-udp),
// as written down in docs/WIRE-V2.md of this repository (cited as §n below). This file
// is the pure, socket-free codec: frames, payload and control channels,
// sealing, padding, replay cache, key derivation and the timing rules a
// Go peer follows. The Conn decides when to call what.
//
// A datagram (§2) is either
//
//	plaintext: frame
//	sealed:    box_nonce(24) ‖ tag(16) ‖ XSalsa20(inner_nonce(16) ‖ timestamp(8) ‖ frame)
//
// with no type or version byte outside the frame; a receiver tells the two
// apart only by trying (§11). The frame is a msgpack map {v, p, c, g}
// (§3): v = 2, p = zstd-compressed payload (§4), c = key-exchange JSON
// (§5), g = padding (§7).

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vaultudp/vaultudp/internal/errs"
	"github.com/vaultudp/vaultudp/internal/msgp"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

const (
	// version is the value of "v" (§3).
	version = 2

	// MaxDatagram is what the reference reads per datagram (§1.4): a
	// longer one is cut and dropped by it. Go must not send more and
	// need not read more from a v2 peer.
	MaxDatagram = 48000

	// BoxNonceLen, tagLen: the NaCl box framing (§6), 40 bytes.
	BoxNonceLen = 24
	tagLen      = box.Overhead
	BoxOverhead = BoxNonceLen + tagLen

	// InnerNonceLen and InnerLen: the replay prefix inside the box
	// (§6): 16 random bytes and an 8-byte big-endian float64 timestamp.
	InnerNonceLen = 16
	InnerLen      = InnerNonceLen + 8

	// SealOverhead is what sealing adds to a frame: 64 bytes (§7).
	SealOverhead = BoxOverhead + InnerLen

	// mtuDeduction is what the reference subtracts from the host MTU to
	// get its effective MTU (§7): 20 IPv4 + 8 UDP + 40 box + 15 "msgpack"
	// + 24 inner prefix.
	mtuDeduction = 107

	// maxDepth bounds msgpack nesting in ignored frame values. The
	// reference never nests anything; this only bounds the decoder.
	maxDepth = 32

	// ReferenceRateLimit: the reference drops datagrams from one source
	// tuple beyond this many in any trailing second, before decrypting
	// (§9). A Go sender stays below it per reference peer.
	ReferenceRateLimit = 100

	// referenceMinPort and referenceMaxPort: the reference forces its
	// recv_port and every add_peer port into this range (§1.3), so a Go
	// peer listening outside it cannot be added as a peer by a reference
	// application (its port would be clamped to another one).
	referenceMinPort = 1500
	referenceMaxPort = 65000
)

// Timing of v2 (§6, §8, §10).
const (
	// MaxAge is the reference's freshness window: it accepts a sealed
	// datagram iff 0 ≤ its_now − timestamp ≤ 60 s (§6 step 3). It is also
	// the age after which our replay cache forgets a nonce.
	MaxAge = 60 * time.Second

	// maxFuture is how far ahead of our clock a v2 peer's timestamp may
	// be and still be accepted by us (the reference accepts nothing from
	// the future; we tolerate clock skew, the replay cache covers it).
	maxFuture = 30 * time.Second

	// SendBackdate is how far in the past we stamp sealed datagrams
	// (sendTimestamp): half the reference's window, so a reference peer
	// accepts them when its clock is anywhere from 30 s behind ours to
	// 30 s ahead (minus transit time). See sendTimestamp.
	SendBackdate = MaxAge / 2

	// referenceKeyLifetime: the reference forgets a peer's keys (and its
	// replay cache for that address) 60 s after the last key exchange it
	// stored for it, checked every 5–30 s, so 60–90 s (§10). It stores
	// whole seconds: the keys can vanish as soon as 60 s after the last
	// exchange arrived.
	referenceKeyLifetime = 60 * time.Second

	// KeyRefreshInterval is how often we resend our key exchange to each
	// reference peer that holds our keys: at least three tries per
	// referenceKeyLifetime, so two lost datagrams in a row do not make
	// the reference forget us (and fall back to plaintext, §10).
	KeyRefreshInterval = 15 * time.Second

	// replayCapacity is the default number of nonces a replayCache
	// remembers per peer: 68 sealed datagrams a second for a whole
	// MaxAge before the cache starts to evict (see replayCache for
	// why eviction never reopens a replay).
	replayCapacity = 4096
)

var (
	errFrame = fmt.Errorf("%w: v2 frame", errs.ErrMalformed)
	errKx    = fmt.Errorf("%w: v2 key exchange", errs.ErrMalformed)
	errStale = fmt.Errorf("%w: v2 timestamp outside the window", errs.ErrReplay)
	// errFrameTooLarge: the unpadded frame does not fit the effective MTU
	// (the reference's MessageTooLargeError, §4 and §7).
	errFrameTooLarge = errors.New("vaultudp: v2 frame larger than the effective MTU")
)

// ---------------------------------------------------------------- §3 frame

// Frame is a decoded v2 frame (§3). Both slices alias the decoded bytes;
// nil means absent or empty, which the reference treats alike (§3, §11).
type Frame struct {
	Payload []byte // "p": zstd frames of the user payload (§4), nil if none
	Control []byte // "c": key-exchange JSON (§5), nil if none
}

// FrameLen is the exact length of the frame AppendFrame writes for a
// payload, control and padding of these lengths.
func FrameLen(payloadLen, controlLen, padLen int) int {
	// map header 84; "v" a1 76 02; three keys of 2 bytes and their bins.
	return 1 + 3 + 3*2 +
		msgp.BinHeaderLen(payloadLen) + payloadLen +
		msgp.BinHeaderLen(controlLen) + controlLen +
		msgp.BinHeaderLen(padLen) + padLen
}

// AppendFrame appends the frame exactly as the reference writes it
// (msgpack-python 1.0, use_bin_type, §3): a fixmap of 4 entries in the
// order v, p, c, g; keys as 1-character fixstr; v as fixint 2; p, c and g
// as bin with the shortest header, an empty one as c4 00. Example, the
// payload "hello" unpadded (30 bytes):
//
//	84 a1 76 02  a1 70 c4 0e <14 bytes zstd>  a1 63 c4 00  a1 67 c4 00
func AppendFrame(dst, payload, control, pad []byte) []byte {
	dst = append(dst, 0x84, 0xa1, 'v', version)
	dst = append(dst, 0xa1, 'p')
	dst = append(msgp.AppendBinHeader(dst, len(payload)), payload...)
	dst = append(dst, 0xa1, 'c')
	dst = append(msgp.AppendBinHeader(dst, len(control)), control...)
	dst = append(dst, 0xa1, 'g')
	return append(msgp.AppendBinHeader(dst, len(pad)), pad...)
}

// DecodeFrame decodes a frame (a whole plaintext datagram, or the box
// content after its 24-byte inner prefix) with the reference's receive
// rules (§3, measured by probe_receive.py), which are, with msgpack-python
// 1.0's unpackb defaults (raw=False, strict_map_key=True):
//
//   - exactly one msgpack object, no trailing byte;
//   - a map (any map encoding), containing the str key "v" (any str
//     encoding); keys of every map must be str or bin (bin keys never
//     match), str values must be valid UTF-8, 0xc1 is invalid;
//   - v must equal 2: any integer encoding of 2, or a float 2.0
//     (float32 or float64); 1, "2", true are rejected;
//   - p and c: absent or "empty" in Python's sense (empty bin or str,
//     nil, false, 0, 0.0, empty array or map) mean none; otherwise they
//     must be bin;
//   - g and any other key: ignored, any well-formed value.
//
// Stricter than the reference (it keeps the last of duplicate keys): a
// repeated "v", "p", "c" or "g" is rejected, nesting is bounded by
// maxDepth, and a non-bin, non-empty p is rejected as a whole (the
// reference would still act on c). Only msgpack ext type -1 (timestamp)
// is checked the way msgpack-python checks it; other exts are accepted
// as ignored values.
//
// The returned slices alias b. DecodeFrame never panics.
func DecodeFrame(b []byte) (Frame, error) {
	var f Frame
	d := reader{msgp.Reader{B: b}}
	c, err := d.Byte()
	if err != nil {
		return f, err
	}
	n, ok, err := d.MapHeader(c)
	if !ok {
		return f, fmt.Errorf("%w: not a map (0x%02x)", errFrame, c)
	}
	if err != nil {
		return f, err
	}
	if n > uint64(d.Left())/2 { // every entry takes at least 2 bytes
		return f, msgp.ErrTruncated
	}
	var seen [4]bool // v, p, c, g
	for range n {
		k, err := d.value(1)
		if err != nil {
			return f, err
		}
		if k.kind != kindStr && k.kind != kindBin {
			return f, fmt.Errorf("%w: map key of type %v", errFrame, k.kind)
		}
		v, err := d.value(1)
		if err != nil {
			return f, err
		}
		if k.kind != kindStr || len(k.data) != 1 {
			continue
		}
		i := strings.IndexByte("vpcg", k.data[0])
		if i < 0 {
			continue
		}
		if seen[i] {
			return f, fmt.Errorf("%w: duplicate key %q", errFrame, k.data)
		}
		seen[i] = true
		switch i {
		case 0:
			if (v.kind != kindInt && v.kind != kindFloat) || v.num != version {
				return f, fmt.Errorf("%w: v is not 2", errFrame)
			}
		case 1, 2:
			var p []byte
			switch {
			case v.kind == kindBin:
				if len(v.data) > 0 {
					p = v.data
				}
			case v.truthy():
				return f, fmt.Errorf("%w: %q is %v, not bin", errFrame, k.data, v.kind)
			}
			if i == 1 {
				f.Payload = p
			} else {
				f.Control = p
			}
		}
	}
	if !seen[0] {
		return f, fmt.Errorf("%w: no \"v\"", errFrame)
	}
	if d.Left() != 0 {
		return f, fmt.Errorf("%w: %d trailing bytes", errFrame, d.Left())
	}
	return f, nil
}

// kind is the msgpack type family of a value.
type kind uint8

const (
	kindNil kind = iota
	kindBool
	kindInt
	kindFloat
	kindStr
	kindBin
	kindArray
	kindMap
	kindExt
)

func (k kind) String() string {
	return [...]string{"nil", "bool", "int", "float", "str", "bin", "array", "map", "ext"}[k]
}

// val is one decoded msgpack value, as much of it as the frame needs.
type val struct {
	kind kind
	num  float64 // bool (0/1), int or float value
	data []byte  // str, bin or ext content
	n    uint64  // elements of an array or map
}

// truthy is Python's truth value of the decoded object (§3: "p and c
// default to empty").
func (v val) truthy() bool {
	switch v.kind {
	case kindNil:
		return false
	case kindBool, kindInt, kindFloat:
		return v.num != 0 // NaN is truthy in Python too
	case kindStr, kindBin:
		return len(v.data) > 0
	case kindArray, kindMap:
		return v.n > 0
	}
	return true // ExtType and Timestamp objects
}

// reader reads msgpack values of any type, bounds-checked, on the shared
// primitives.
type reader struct {
	msgp.Reader
}

func (d *reader) value(depth int) (val, error) {
	if depth > maxDepth {
		return val{}, fmt.Errorf("%w: nested deeper than %d", errFrame, maxDepth)
	}
	c, err := d.Byte()
	if err != nil {
		return val{}, err
	}
	switch {
	case c <= 0x7f:
		return val{kind: kindInt, num: float64(c)}, nil
	case c >= 0xe0:
		return val{kind: kindInt, num: float64(int8(c))}, nil
	case c&0xe0 == 0xa0:
		return d.str(uint64(c & 0x1f))
	case c&0xf0 == 0x90:
		return d.array(uint64(c&0x0f), depth)
	case c&0xf0 == 0x80:
		return d.mapv(uint64(c&0x0f), depth)
	}
	var n uint64
	switch c {
	case 0xc0:
		return val{kind: kindNil}, nil
	case 0xc2, 0xc3:
		return val{kind: kindBool, num: float64(c - 0xc2)}, nil
	case 0xc4, 0xc5, 0xc6: // bin 8/16/32
		if n, err = d.UintN(1 << (c - 0xc4)); err != nil {
			return val{}, err
		}
		p, err := d.Take(n)
		return val{kind: kindBin, data: p}, err
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32
		if n, err = d.UintN(1 << (c - 0xc7)); err != nil {
			return val{}, err
		}
		return d.ext(n)
	case 0xca:
		u, err := d.UintN(4)
		return val{kind: kindFloat, num: float64(math.Float32frombits(uint32(u)))}, err
	case 0xcb:
		u, err := d.UintN(8)
		return val{kind: kindFloat, num: math.Float64frombits(u)}, err
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8/16/32/64
		u, err := d.UintN(1 << (c - 0xcc))
		return val{kind: kindInt, num: float64(u)}, err
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8/16/32/64
		w := 1 << (c - 0xd0)
		u, err := d.UintN(w)
		s := int64(u<<(64-8*w)) >> (64 - 8*w) // sign-extend
		return val{kind: kindInt, num: float64(s)}, err
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1/2/4/8/16
		return d.ext(1 << (c - 0xd4))
	case 0xd9, 0xda, 0xdb: // str 8/16/32
		if n, err = d.UintN(1 << (c - 0xd9)); err != nil {
			return val{}, err
		}
		return d.str(n)
	case 0xdc, 0xdd: // array 16/32
		if n, err = d.UintN(2 << (c - 0xdc)); err != nil {
			return val{}, err
		}
		return d.array(n, depth)
	case 0xde, 0xdf: // map 16/32
		if n, err = d.UintN(2 << (c - 0xde)); err != nil {
			return val{}, err
		}
		return d.mapv(n, depth)
	}
	return val{}, fmt.Errorf("%w: invalid msgpack byte 0x%02x", errFrame, c)
}

func (d *reader) str(n uint64) (val, error) {
	p, err := d.Take(n)
	if err != nil {
		return val{}, err
	}
	if !utf8.Valid(p) { // raw=False decodes every str strictly
		return val{}, fmt.Errorf("%w: str is not UTF-8", errFrame)
	}
	return val{kind: kindStr, data: p}, nil
}

func (d *reader) ext(n uint64) (val, error) {
	t, err := d.Byte()
	if err != nil {
		return val{}, err
	}
	p, err := d.Take(n)
	if err != nil {
		return val{}, err
	}
	if int8(t) == -1 { // msgpack-python builds a Timestamp, which checks this
		var nsec uint64
		switch len(p) {
		case 4:
		case 8:
			nsec = binary.BigEndian.Uint64(p) >> 34
		case 12:
			nsec = uint64(binary.BigEndian.Uint32(p))
		default:
			return val{}, fmt.Errorf("%w: timestamp ext of %d bytes", errFrame, len(p))
		}
		if nsec >= 1e9 {
			return val{}, fmt.Errorf("%w: timestamp ext nanoseconds %d", errFrame, nsec)
		}
	}
	return val{kind: kindExt, data: p}, nil
}

func (d *reader) array(n uint64, depth int) (val, error) {
	if n > uint64(d.Left()) { // every element takes at least a byte
		return val{}, msgp.ErrTruncated
	}
	for range n {
		if _, err := d.value(depth + 1); err != nil {
			return val{}, err
		}
	}
	return val{kind: kindArray, n: n}, nil
}

func (d *reader) mapv(n uint64, depth int) (val, error) {
	if n > uint64(d.Left())/2 {
		return val{}, msgp.ErrTruncated
	}
	for range n {
		k, err := d.value(depth + 1)
		if err != nil {
			return val{}, err
		}
		if k.kind != kindStr && k.kind != kindBin { // strict_map_key
			return val{}, fmt.Errorf("%w: map key of type %v", errFrame, k.kind)
		}
		if _, err := d.value(depth + 1); err != nil {
			return val{}, err
		}
	}
	return val{kind: kindMap, n: n}, nil
}

// ---------------------------------------------------------------- §7 padding

// EffectiveMTU is the reference's effective MTU for a host MTU M
// (§7): M − 107, the largest unpadded frame it sends and the size it pads
// to. The reference takes M as the smallest MTU of the up interfaces
// whose name does not start with "lo" (1500 if none), read once; loopback
// traffic is padded to that too. Unlike the reference, the result is
// capped so that a padded, sealed frame never exceeds the 48000 bytes a
// reference reads (§1.4): that only matters for M above 48042.
func EffectiveMTU(hostMTU int) int {
	return min(hostMTU-mtuDeduction, MaxDatagram-SealOverhead-1)
}

// ---------------------------------------------------------------- §4 payload

// ---------------------------------------------------------------- §5 control

// KeyExchange is the content of the control channel (§5.1), as carried:
//
//	{"enc_key": "<b64 44>", "sign_key": "<b64 44>", "signature": "<b64 204>", "port": <int>}
//
// enc_key is the X25519 box public key, sign_key the Ed25519 public key,
// signature the b64 of NaCl's combined signed message
// signature(64) ‖ ASCII(enc_key ‖ sign_key) (152 bytes), port the sender's
// listening port.
type KeyExchange struct {
	EncKey, SignKey string
	Signature       string // "" when absent, null or empty
	Port            int
	HasPort         bool
}

// AppendKeyExchange appends the JSON exactly as the reference's
// json.dumps writes it (§5.1): members in the order enc_key, sign_key,
// signature, port; separators ", " and ": "; an empty signature as null;
// port omitted when !hasPort (the reference always sends it). The string
// members must need no JSON escaping (base64 never does).
func AppendKeyExchange(dst []byte, kx *KeyExchange) []byte {
	dst = append(dst, `{"enc_key": "`...)
	dst = append(dst, kx.EncKey...)
	dst = append(dst, `", "sign_key": "`...)
	dst = append(dst, kx.SignKey...)
	dst = append(dst, `", "signature": `...)
	if kx.Signature == "" {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '"')
		dst = append(dst, kx.Signature...)
		dst = append(dst, '"')
	}
	if kx.HasPort {
		dst = append(dst, `, "port": `...)
		dst = strconv.AppendInt(dst, int64(kx.Port), 10)
	}
	return append(dst, '}')
}

// DecodeKeyExchange parses the control channel c (§5.2 steps 1–4). It
// accepts everything the reference sends and any JSON layout (compact
// separators, other member order, extra members; the last of duplicate
// members wins, as in Python). It returns an error, where the reference
// would drop or ignore the datagram, for: c not UTF-8, not a JSON object,
// enc_key or sign_key missing, empty or not a string. Stricter than the
// reference: a signature that is neither a string nor null, and a port
// that is a JSON integer outside 1–65535, are errors; a port that is not
// a JSON integer (a string, a float, true) is treated as absent (the
// reference takes true as port 1).
//
// Nothing here checks the keys or the signature: that is verify.
func DecodeKeyExchange(c []byte) (KeyExchange, error) {
	var kx KeyExchange
	if !utf8.Valid(c) {
		return kx, fmt.Errorf("%w: not UTF-8", errKx)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c, &m); err != nil || m == nil {
		return kx, fmt.Errorf("%w: not a JSON object", errKx)
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"enc_key", &kx.EncKey}, {"sign_key", &kx.SignKey}} {
		raw, ok := m[f.name]
		if !ok || json.Unmarshal(raw, f.dst) != nil || *f.dst == "" {
			return kx, fmt.Errorf("%w: no %s string", errKx, f.name)
		}
	}
	if raw, ok := m["signature"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &kx.Signature); err != nil {
			return kx, fmt.Errorf("%w: signature is not a string", errKx)
		}
	}
	if raw, ok := m["port"]; ok && isJSONInteger(raw) {
		p, err := strconv.ParseInt(string(raw), 10, 32)
		if err != nil || p < 1 || p > math.MaxUint16 {
			return kx, fmt.Errorf("%w: port %s", errKx, raw)
		}
		kx.Port, kx.HasPort = int(p), true
	}
	return kx, nil
}

// isJSONInteger reports whether a JSON value is a number without fraction
// or exponent: what Python's json module turns into an int.
func isJSONInteger(raw json.RawMessage) bool {
	s := raw
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if len(s) == 0 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// PeerKeys are a v2 peer's public keys, decoded and verified.
type PeerKeys struct {
	Box  [32]byte          // X25519 public key: enc_key
	Sign ed25519.PublicKey // Ed25519 public key: sign_key
}

// B64 is the base64 of v2: standard alphabet with padding (§0). Decoding
// is strict (canonical padding bits); see decodeB64.
var B64 = base64.StdEncoding.Strict()

// decodeB64 decodes the b64 text of exactly n bytes: canonical, padded,
// nothing else in s (Go's decoder alone would skip \r and \n; the
// reference's skips every character outside the alphabet), so each value
// has exactly one text form.
func decodeB64(s string, n int) ([]byte, bool) {
	if len(s) != B64.EncodedLen(n) {
		return nil, false
	}
	b, err := B64.DecodeString(s)
	return b, err == nil && len(b) == n
}

// VerifyKeyExchange checks a key exchange and returns its keys. Unlike
// the reference (§5.2.5, §13a), which checks only that the signature is
// valid under the sign_key of the same packet, and not at all when it is
// missing, this requires:
//
//   - enc_key and sign_key: canonical b64 of 32 bytes each; enc_key not a
//     low-order X25519 point (it would give a shared key anyone knows);
//   - signature present: canonical b64 of exactly 64 + 88 bytes, the
//     Ed25519 signature followed by the message;
//   - the message equals ASCII(enc_key ‖ sign_key), the very strings
//     carried (the fix of §13a: a signature lifted from another peer's
//     key exchange, or over anything else, is rejected);
//   - the signature verifies under sign_key.
//
// A pinned key (PeerConfig.PublicKey against sign_key, a configured box
// key against enc_key) is for the caller to compare with the result.
//
// Self-signing is all v2 offers: without a pinned key this proves only
// that the sender holds the private sign key, not who it is (§13b).
func VerifyKeyExchange(kx *KeyExchange) (PeerKeys, error) {
	var k PeerKeys
	enc, ok := decodeB64(kx.EncKey, 32)
	if !ok {
		return k, fmt.Errorf("%w: enc_key is not the base64 of 32 bytes", errs.ErrAuth)
	}
	sign, ok := decodeB64(kx.SignKey, ed25519.PublicKeySize)
	if !ok {
		return k, fmt.Errorf("%w: sign_key is not the base64 of 32 bytes", errs.ErrAuth)
	}
	if kx.Signature == "" {
		return k, fmt.Errorf("%w: unsigned v2 key exchange", errs.ErrAuth)
	}
	signed, ok := decodeB64(kx.Signature, ed25519.SignatureSize+len(kx.EncKey)+len(kx.SignKey))
	if !ok {
		return k, fmt.Errorf("%w: signature is not the base64 of a signed message over the keys", errs.ErrAuth)
	}
	msg := signed[ed25519.SignatureSize:]
	if string(msg[:len(kx.EncKey)]) != kx.EncKey || string(msg[len(kx.EncKey):]) != kx.SignKey {
		return k, fmt.Errorf("%w: the signed message is not the keys it comes with", errs.ErrAuth)
	}
	if !ed25519.Verify(sign, msg, signed[:ed25519.SignatureSize]) {
		return k, fmt.Errorf("%w: bad v2 key exchange signature", errs.ErrAuth)
	}
	if _, err := curve25519.X25519(lowOrderProbe[:], enc); err != nil {
		return k, fmt.Errorf("%w: enc_key is a low-order point", errs.ErrAuth)
	}
	copy(k.Box[:], enc)
	k.Sign = ed25519.PublicKey(sign)
	return k, nil
}

// lowOrderProbe is any scalar: X25519 clamps it to a multiple of the
// cofactor, so the result is all zeros, whatever the scalar, exactly when
// the point has low order.
var lowOrderProbe = [32]byte{1}

// keyExchangeMatchesPeer reports whether a key exchange received from
// src belongs to the v2 peer configured at peer (its listening address)
// under our rule (§12.2, §13e): same IP (an IPv4-mapped address is the
// IPv4 address), and the advertised port is the peer's port — or, with
// no port advertised, the source is the peer's address. The reference's
// key exchanges come from its ephemeral sending port and advertise its
// listening port (§1.2), so the source port is not compared. A key
// exchange naming another port does not install keys for that port (the
// reference would, §13e).
func keyExchangeMatchesPeer(src netip.AddrPort, kx *KeyExchange, peer netip.AddrPort) bool {
	if src.Addr().Unmap() != peer.Addr().Unmap() {
		return false
	}
	if kx.HasPort {
		return kx.Port == int(peer.Port())
	}
	return src.Port() == peer.Port()
}

// ReferenceClampPort is the port a reference application ends up using
// for recv_port and add_peer (§1.3): forced into [1500, 65000].
func ReferenceClampPort(port int) int {
	return min(max(port, referenceMinPort), referenceMaxPort)
}

// probeEncKey is an enc_key the reference stores but cannot seal with.
const probeEncKey = "AAAA"

// AppendKeyProbe appends an optional "probe" key exchange: the sender's
// real sign_key and port, no signature, and an enc_key ("AAAA") that is
// no X25519 key. It uses two measured reference behaviours (§11 table,
// §13h): a key exchange for a key address with no stored keys is answered
// at once with the reference's own key exchange, and sealing with an
// unusable enc_key falls back to plaintext, so that answer comes in
// plaintext and tells us the reference's keys without waiting for its
// periodic round (§12.3). Our real key exchange, sent in plaintext right
// after, overwrites the unusable key (no reply, §5.2.7). Until it arrives
// the reference sends us plaintext and cannot open our sealed datagrams.
// If the reference already holds keys for us, it overwrites them with the
// probe's and sends nothing back; its next periodic key exchange to us
// is then plaintext.
func AppendKeyProbe(dst []byte, signKey string, port int) []byte {
	return AppendKeyExchange(dst, &KeyExchange{EncKey: probeEncKey, SignKey: signKey, Port: port, HasPort: true})
}

// ---------------------------------------------------------------- keys

// Keys are our static v2 keys (§5.1, §10): an X25519 box key pair and
// an Ed25519 signing key, with their b64 text as carried in key
// exchanges.
type Keys struct {
	BoxPrivate [32]byte
	BoxPublic  [32]byte
	Sign       ed25519.PrivateKey
	EncKey     string // b64 of boxPublic
	SignKey    string // b64 of the Ed25519 public key
}

// DeriveKeys derives the v2 keys from the Ed25519 identity, so that one
// key file serves both protocols. The signing key is the identity itself.
// The box private key is the standard Ed25519 → X25519 conversion
// (libsodium's crypto_sign_ed25519_sk_to_curve25519, RFC 8032 §5.1.5
// step 1–2): the first 32 bytes of SHA-512(seed), clamped (k[0] &= 248,
// k[31] &= 127, k[31] |= 64) — the very scalar Ed25519 signs with. Its
// X25519 public key is then the Montgomery form u = (1+y)/(1−y) of the
// Ed25519 public key, so a v2 box key can be checked against an Ed25519
// identity key.
//
// Signatures cannot be confused across protocols: v2 signs only 88-byte
// base64 strings, every v3 signed message starts with a label holding a
// space and a NUL byte (handshake.go).
func DeriveKeys(identity ed25519.PrivateKey) *Keys {
	h := sha512.Sum512(identity.Seed())
	defer clear(h[:])
	var priv [32]byte
	copy(priv[:], h[:32])
	priv[0] &= 248
	priv[31] &= 127
	priv[31] |= 64
	return NewKeys(&priv, identity)
}

// NewKeys builds v2 keys from an explicit X25519 private key (the
// reference's enc_private, used as is: X25519 clamps) and Ed25519 key.
func NewKeys(boxPrivate *[32]byte, sign ed25519.PrivateKey) *Keys {
	k := &Keys{BoxPrivate: *boxPrivate, Sign: sign}
	pub, err := curve25519.X25519(k.BoxPrivate[:], curve25519.Basepoint)
	if err != nil {
		panic(err) // the base point times any scalar is never the identity
	}
	copy(k.BoxPublic[:], pub)
	k.EncKey = B64.EncodeToString(pub)
	k.SignKey = B64.EncodeToString(sign.Public().(ed25519.PublicKey))
	return k
}

// keyExchange returns our key exchange (§5.1) advertising the listening
// port: the signature is NaCl's combined form over ASCII(enc_key ‖
// sign_key), as the reference signs (Ed25519 is deterministic, so this is
// byte for byte the reference's JSON for the same keys).
func (k *Keys) KeyExchange(port int) *KeyExchange {
	msg := []byte(k.EncKey + k.SignKey)
	signed := append(ed25519.Sign(k.Sign, msg), msg...)
	return &KeyExchange{
		EncKey:    k.EncKey,
		SignKey:   k.SignKey,
		Signature: B64.EncodeToString(signed),
		Port:      port,
		HasPort:   true,
	}
}

// sharedKey precomputes the NaCl box key with a peer's X25519 public key
// (box.Precompute: HSalsa20 of the X25519 result), for Seal and Open
// in both directions. A low-order peer key, whose shared secret is all
// zeros, is refused, as libsodium refuses it.
func (k *Keys) SharedKey(peer *[32]byte) (*[32]byte, error) {
	if _, err := curve25519.X25519(k.BoxPrivate[:], peer[:]); err != nil {
		return nil, fmt.Errorf("%w: v2 peer box key: %v", errs.ErrAuth, err)
	}
	shared := new([32]byte)
	box.Precompute(shared, peer, &k.BoxPrivate)
	return shared, nil
}

// ---------------------------------------------------------------- §6 sealing

// Inner is the opened box content (§6): the replay nonce, the sender's
// timestamp and the frame (aliasing the opened buffer).
type Inner struct {
	Nonce [InnerNonceLen]byte
	TS    float64
	Frame []byte
}

// appendInnerPrefix appends the 24-byte box plaintext prefix (§6): the
// 16 random bytes of the replay nonce (unrelated to the box nonce), then
// the send time in Unix seconds as a big-endian IEEE-754 double (Python
// struct '!d').
func appendInnerPrefix(dst []byte, nonce *[InnerNonceLen]byte, ts float64) []byte {
	dst = append(dst, nonce[:]...)
	return binary.BigEndian.AppendUint64(dst, math.Float64bits(ts))
}

// Seal appends the sealed datagram (§6)
//
//	box_nonce(24) ‖ tag(16) ‖ XSalsa20(inner_nonce(16) ‖ ts(8) ‖ frame)
//
// to dst: NaCl crypto_box with the precomputed shared key, the layout
// PyNaCl's Box.encrypt returns. The box nonce and the inner nonce must be
// fresh random bytes for every datagram (the reference draws both at
// random); ts comes from sendTimestamp. They are parameters so that the
// vectors reproduce; the Endpoint seals with the same sealBox, into
// buffers of its own.
func Seal(dst []byte, shared *[32]byte, boxNonce *[BoxNonceLen]byte, innerNonce *[InnerNonceLen]byte, ts float64, frame []byte) []byte {
	plain := make([]byte, 0, InnerLen+len(frame))
	plain = append(appendInnerPrefix(plain, innerNonce, ts), frame...)
	return sealBox(dst, shared, boxNonce, plain)
}

// sealBox appends box_nonce ‖ crypto_box(plain) to dst.
func sealBox(dst []byte, shared *[32]byte, boxNonce *[BoxNonceLen]byte, plain []byte) []byte {
	dst = append(dst, boxNonce[:]...)
	return box.SealAfterPrecomputation(dst, plain, boxNonce, shared)
}

// Open opens a sealed datagram with the shared key of the peer it is
// supposed to come from, appending the box content to dst (§6 steps 1–2).
// It fails (errs.ErrAuth) on any authentication failure, and (errs.ErrMalformed)
// when the datagram is too short or the content shorter than the 24-byte
// prefix. The caller then checks the timestamp and the nonce with a
// replayCache before decoding the frame. Per §6/§11, a failure is not
// final: the same datagram may still be a plaintext frame.
func Open(dst []byte, shared *[32]byte, datagram []byte) (Inner, error) {
	var in Inner
	if len(datagram) < BoxOverhead {
		return in, fmt.Errorf("%w: v2 sealed datagram of %d bytes", errs.ErrMalformed, len(datagram))
	}
	var nonce [BoxNonceLen]byte
	copy(nonce[:], datagram)
	out, ok := box.OpenAfterPrecomputation(dst, datagram[BoxNonceLen:], &nonce, shared)
	if !ok {
		return in, fmt.Errorf("%w: v2 box", errs.ErrAuth)
	}
	plain := out[len(dst):]
	if len(plain) < InnerLen {
		return in, fmt.Errorf("%w: v2 box content of %d bytes", errs.ErrMalformed, len(plain))
	}
	copy(in.Nonce[:], plain)
	in.TS = math.Float64frombits(binary.BigEndian.Uint64(plain[InnerNonceLen:]))
	in.Frame = plain[InnerLen:]
	return in, nil
}

// ---------------------------------------------------------------- time

// UnixSeconds is t as the reference's time.time(): Unix seconds as a
// float64 with sub-second precision.
func UnixSeconds(t time.Time) float64 {
	return float64(t.Unix()) + float64(t.Nanosecond())/1e9
}

// sendTimestamp is the timestamp to seal into a datagram sent at now
// (§6, §12.1). The reference accepts it iff 0 ≤ its_now − ts ≤ 60 s: a
// timestamp ahead of its clock by any amount is rejected (measured: 50 ms
// already is). Rule: stamp now − 30 s (SendBackdate), the middle of its
// window, so the datagram is accepted as long as the reference's clock is
// no more than 30 s behind ours and no more than 30 s minus the transit
// time ahead. The earlier stamp also halves how long a captured datagram
// can be replayed to a reference that lost its nonce cache (§13d).
func sendTimestamp(now time.Time) float64 {
	return UnixSeconds(now.Add(-SendBackdate))
}

// ---------------------------------------------------------------- §8 replay

// replayCache is our replay protection for the sealed datagrams of one
// v2 peer (§8). The reference keeps an unbounded set of inner nonces per
// source tuple, dropped whenever its keys expire (§13d); this cache is
// bounded and sound:
//
//   - a datagram is accepted iff its timestamp lies in
//     [now − maxAge, now + maxFuture] (NaN and infinities rejected), is
//     above the floor, and its 16-byte nonce is not in the cache;
//   - accepted nonces are remembered in insertion order, at most capacity
//     of them; the oldest are dropped first, when their timestamp has
//     left the window or when the cache is full;
//   - the floor is the largest timestamp of any nonce dropped so far, so
//     a dropped nonce can never be accepted again: its datagram either
//     fails the window or sits at or below the floor. Under a flood of
//     more than capacity datagrams per window the floor rises and only
//     datagrams reordered behind it are lost.
//
// check is O(1) (amortized: each entry is dropped once). Memory grows with
// use up to capacity entries. Key the cache by peer (identity), not by
// source tuple: the reference sends from an ephemeral port (§1.2), and
// keeping one cache across key refreshes and source ports closes both
// replays of §13d. Call check only after the box opened: unauthenticated
// nonces must not fill it. Not safe for concurrent use.
type replayCache struct {
	capacity          int
	maxAge, maxFuture float64 // seconds
	seen              map[[InnerNonceLen]byte]struct{}
	ring              []replayEntry // circular, insertion order; grows to capacity
	head, n           int
	floor             float64
}

type replayEntry struct {
	Nonce [InnerNonceLen]byte
	TS    float64
}

// newReplayCache returns a cache of at most capacity nonces (at least
// 1; replayCapacity is the default) with the window of MaxAge into
// the past and maxFuture into the future.
func newReplayCache(capacity int) *replayCache {
	capacity = max(capacity, 1)
	return &replayCache{
		capacity:  capacity,
		maxAge:    MaxAge.Seconds(),
		maxFuture: maxFuture.Seconds(),
		seen:      make(map[[InnerNonceLen]byte]struct{}, min(capacity, 64)),
		floor:     math.Inf(-1),
	}
}

// addedAllowance is how far before the moment a v2 peer was added a
// timestamp may lie and still be accepted from it (see
// newPeerReplayCache): the SendBackdate a Go peer stamps its
// datagrams with. The reference itself allows no clock skew into the
// future (§6 step 3) and stamps its own clock at sending, so a reference
// peer's datagrams pass from the start as long as its clock is at most
// this much behind ours.
const addedAllowance = SendBackdate

// newPeerReplayCache is the replay cache of a v2 peer added at added
// (by AddPeer, or by Listen and Wrap for Config.Peers): its floor starts
// at added − addedAllowance instead of minus infinity, so that a sealed
// datagram stamped earlier is refused. Without it a datagram captured
// before a restart of the Conn with the same keys, or before RemovePeer
// and AddPeer, would be accepted again while still in the window, its
// nonce being in no cache. The rule, exactly: a sealed datagram from the
// peer is refused unless its timestamp ts satisfies
//
//	added − 30 s < ts   and   now − 60 s ≤ ts ≤ now + 30 s
//
// (and its nonce is new). What stays open: a reference peer's datagrams
// sent less than 30 s before the add (Go peers stamp 30 s in the past,
// so none of theirs sent before the add passes).
func newPeerReplayCache(capacity int, added time.Time) *replayCache {
	c := newReplayCache(capacity)
	c.floor = UnixSeconds(added.Add(-addedAllowance))
	return c
}

// check accepts the nonce and timestamp of an opened datagram at now and
// remembers the nonce, or rejects it (errs.ErrReplay) changing nothing.
func (c *replayCache) check(nonce *[InnerNonceLen]byte, ts float64, now time.Time) error {
	t := UnixSeconds(now)
	age := t - ts
	if !(age <= c.maxAge && age >= -c.maxFuture) { // also NaN
		return fmt.Errorf("%w: age %.3fs", errStale, age)
	}
	for c.n > 0 && c.ring[c.head].TS < t-c.maxAge {
		c.drop()
	}
	if ts <= c.floor {
		return fmt.Errorf("%w: v2 timestamp at or below the replay floor", errs.ErrReplay)
	}
	if _, dup := c.seen[*nonce]; dup {
		return fmt.Errorf("%w: v2 nonce seen", errs.ErrReplay)
	}
	if c.n == len(c.ring) {
		if len(c.ring) < c.capacity {
			c.grow()
		} else {
			c.drop()
		}
	}
	c.ring[(c.head+c.n)%len(c.ring)] = replayEntry{Nonce: *nonce, TS: ts}
	c.n++
	c.seen[*nonce] = struct{}{}
	return nil
}

// drop forgets the oldest entry, raising the floor to its timestamp.
func (c *replayCache) drop() {
	e := &c.ring[c.head]
	c.floor = max(c.floor, e.TS)
	delete(c.seen, e.Nonce)
	c.head = (c.head + 1) % len(c.ring)
	c.n--
}

func (c *replayCache) grow() {
	ring := make([]replayEntry, min(max(2*len(c.ring), 16), c.capacity))
	for i := range c.n {
		ring[i] = c.ring[(c.head+i)%len(c.ring)]
	}
	c.ring, c.head = ring, 0
}
