package vaultudp

// Protocol v2: the wire format of the Python reference (py-vault-udp),
// as written down in ../shared/WIRE-V2.md (cited as §n below). This file
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
	"io"
	"math"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

const (
	// v2Version is the value of "v" (§3).
	v2Version = 2

	// v2MaxDatagram is what the reference reads per datagram (§1.4): a
	// longer one is cut and dropped by it. Go must not send more and
	// need not read more from a v2 peer.
	v2MaxDatagram = 48000

	// v2MaxPayload caps a decompressed payload (§4): the reference has no
	// cap at all; ours makes zip bombs harmless. A reference payload that
	// inflates past it is dropped.
	v2MaxPayload = 48000

	// v2BoxNonceLen, v2TagLen: the NaCl box framing (§6), 40 bytes.
	v2BoxNonceLen = 24
	v2TagLen      = box.Overhead
	v2BoxOverhead = v2BoxNonceLen + v2TagLen

	// v2InnerNonceLen and v2InnerLen: the replay prefix inside the box
	// (§6): 16 random bytes and an 8-byte big-endian float64 timestamp.
	v2InnerNonceLen = 16
	v2InnerLen      = v2InnerNonceLen + 8

	// v2SealOverhead is what sealing adds to a frame: 64 bytes (§7).
	v2SealOverhead = v2BoxOverhead + v2InnerLen

	// v2MTUDeduction is what the reference subtracts from the host MTU to
	// get its effective MTU (§7): 20 IPv4 + 8 UDP + 40 box + 15 "msgpack"
	// + 24 inner prefix.
	v2MTUDeduction = 107

	// v2MaxDepth bounds msgpack nesting in ignored frame values. The
	// reference never nests anything; this only bounds the decoder.
	v2MaxDepth = 32

	// v2ReferenceRateLimit: the reference drops datagrams from one source
	// tuple beyond this many in any trailing second, before decrypting
	// (§9). A Go sender stays below it per reference peer.
	v2ReferenceRateLimit = 100

	// v2ReferenceMinPort and v2ReferenceMaxPort: the reference forces its
	// recv_port and every add_peer port into this range (§1.3), so a Go
	// peer listening outside it cannot be added as a peer by a reference
	// application (its port would be clamped to another one).
	v2ReferenceMinPort = 1500
	v2ReferenceMaxPort = 65000
)

// Timing of v2 (§6, §8, §10).
const (
	// v2MaxAge is the reference's freshness window: it accepts a sealed
	// datagram iff 0 ≤ its_now − timestamp ≤ 60 s (§6 step 3). It is also
	// the age after which our replay cache forgets a nonce.
	v2MaxAge = 60 * time.Second

	// v2MaxFuture is how far ahead of our clock a v2 peer's timestamp may
	// be and still be accepted by us (the reference accepts nothing from
	// the future; we tolerate clock skew, the replay cache covers it).
	v2MaxFuture = 30 * time.Second

	// v2SendBackdate is how far in the past we stamp sealed datagrams
	// (v2SendTimestamp): half the reference's window, so a reference peer
	// accepts them when its clock is anywhere from 30 s behind ours to
	// 30 s ahead (minus transit time). See v2SendTimestamp.
	v2SendBackdate = v2MaxAge / 2

	// v2ReferenceKeyLifetime: the reference forgets a peer's keys (and its
	// replay cache for that address) 60 s after the last key exchange it
	// stored for it, checked every 5–30 s, so 60–90 s (§10). It stores
	// whole seconds: the keys can vanish as soon as 60 s after the last
	// exchange arrived.
	v2ReferenceKeyLifetime = 60 * time.Second

	// v2KeyRefreshInterval is how often we resend our key exchange to each
	// reference peer that holds our keys: at least three tries per
	// v2ReferenceKeyLifetime, so two lost datagrams in a row do not make
	// the reference forget us (and fall back to plaintext, §10).
	v2KeyRefreshInterval = 15 * time.Second

	// v2ReplayCapacity is the default number of nonces a v2ReplayCache
	// remembers per peer: 68 sealed datagrams a second for a whole
	// v2MaxAge before the cache starts to evict (see v2ReplayCache for
	// why eviction never reopens a replay).
	v2ReplayCapacity = 4096
)

var (
	errV2Frame = fmt.Errorf("%w: v2 frame", errMalformed)
	errV2Kx    = fmt.Errorf("%w: v2 key exchange", errMalformed)
	errV2Stale = fmt.Errorf("%w: v2 timestamp outside the window", errReplay)
	// errV2TooLarge: the unpadded frame does not fit the effective MTU
	// (the reference's MessageTooLargeError, §4 and §7).
	errV2TooLarge = errors.New("vaultudp: v2 frame larger than the effective MTU")
)

// ---------------------------------------------------------------- §3 frame

// v2Frame is a decoded v2 frame (§3). Both slices alias the decoded bytes;
// nil means absent or empty, which the reference treats alike (§3, §11).
type v2Frame struct {
	payload []byte // "p": zstd frames of the user payload (§4), nil if none
	control []byte // "c": key-exchange JSON (§5), nil if none
}

// v2FrameLen is the exact length of the frame appendV2Frame writes for a
// payload, control and padding of these lengths.
func v2FrameLen(payloadLen, controlLen, padLen int) int {
	// map header 84; "v" a1 76 02; three keys of 2 bytes and their bins.
	return 1 + 3 + 3*2 +
		binHeaderLen(payloadLen) + payloadLen +
		binHeaderLen(controlLen) + controlLen +
		binHeaderLen(padLen) + padLen
}

// appendV2Frame appends the frame exactly as the reference writes it
// (msgpack-python 1.0, use_bin_type, §3): a fixmap of 4 entries in the
// order v, p, c, g; keys as 1-character fixstr; v as fixint 2; p, c and g
// as bin with the shortest header, an empty one as c4 00. Example, the
// payload "hello" unpadded (30 bytes):
//
//	84 a1 76 02  a1 70 c4 0e <14 bytes zstd>  a1 63 c4 00  a1 67 c4 00
func appendV2Frame(dst, payload, control, pad []byte) []byte {
	dst = append(dst, 0x84, 0xa1, 'v', v2Version)
	dst = append(dst, 0xa1, 'p')
	dst = append(appendBinHeader(dst, len(payload)), payload...)
	dst = append(dst, 0xa1, 'c')
	dst = append(appendBinHeader(dst, len(control)), control...)
	dst = append(dst, 0xa1, 'g')
	return append(appendBinHeader(dst, len(pad)), pad...)
}

// decodeV2Frame decodes a frame (a whole plaintext datagram, or the box
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
// v2MaxDepth, and a non-bin, non-empty p is rejected as a whole (the
// reference would still act on c). Only msgpack ext type -1 (timestamp)
// is checked the way msgpack-python checks it; other exts are accepted
// as ignored values.
//
// The returned slices alias b. decodeV2Frame never panics.
func decodeV2Frame(b []byte) (v2Frame, error) {
	var f v2Frame
	d := v2Reader{mpReader{b: b}}
	c, err := d.byte()
	if err != nil {
		return f, err
	}
	var n uint64
	switch {
	case c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
	case c == 0xde:
		n, err = d.uintN(2)
	case c == 0xdf:
		n, err = d.uintN(4)
	default:
		return f, fmt.Errorf("%w: not a map (0x%02x)", errV2Frame, c)
	}
	if err != nil {
		return f, err
	}
	if n > uint64(d.left())/2 { // every entry takes at least 2 bytes
		return f, errTruncated
	}
	var seen [4]bool // v, p, c, g
	for range n {
		k, err := d.value(1)
		if err != nil {
			return f, err
		}
		if k.kind != v2KindStr && k.kind != v2KindBin {
			return f, fmt.Errorf("%w: map key of type %v", errV2Frame, k.kind)
		}
		v, err := d.value(1)
		if err != nil {
			return f, err
		}
		if k.kind != v2KindStr || len(k.data) != 1 {
			continue
		}
		i := strings.IndexByte("vpcg", k.data[0])
		if i < 0 {
			continue
		}
		if seen[i] {
			return f, fmt.Errorf("%w: duplicate key %q", errV2Frame, k.data)
		}
		seen[i] = true
		switch i {
		case 0:
			if (v.kind != v2KindInt && v.kind != v2KindFloat) || v.num != v2Version {
				return f, fmt.Errorf("%w: v is not 2", errV2Frame)
			}
		case 1, 2:
			var p []byte
			switch {
			case v.kind == v2KindBin:
				if len(v.data) > 0 {
					p = v.data
				}
			case v.truthy():
				return f, fmt.Errorf("%w: %q is %v, not bin", errV2Frame, k.data, v.kind)
			}
			if i == 1 {
				f.payload = p
			} else {
				f.control = p
			}
		}
	}
	if !seen[0] {
		return f, fmt.Errorf("%w: no \"v\"", errV2Frame)
	}
	if d.left() != 0 {
		return f, fmt.Errorf("%w: %d trailing bytes", errV2Frame, d.left())
	}
	return f, nil
}

// v2Kind is the msgpack type family of a value.
type v2Kind uint8

const (
	v2KindNil v2Kind = iota
	v2KindBool
	v2KindInt
	v2KindFloat
	v2KindStr
	v2KindBin
	v2KindArray
	v2KindMap
	v2KindExt
)

func (k v2Kind) String() string {
	return [...]string{"nil", "bool", "int", "float", "str", "bin", "array", "map", "ext"}[k]
}

// v2Val is one decoded msgpack value, as much of it as the frame needs.
type v2Val struct {
	kind v2Kind
	num  float64 // bool (0/1), int or float value
	data []byte  // str, bin or ext content
	n    uint64  // elements of an array or map
}

// truthy is Python's truth value of the decoded object (§3: "p and c
// default to empty").
func (v v2Val) truthy() bool {
	switch v.kind {
	case v2KindNil:
		return false
	case v2KindBool, v2KindInt, v2KindFloat:
		return v.num != 0 // NaN is truthy in Python too
	case v2KindStr, v2KindBin:
		return len(v.data) > 0
	case v2KindArray, v2KindMap:
		return v.n > 0
	}
	return true // ExtType and Timestamp objects
}

// v2Reader reads msgpack values of any type from b, bounds-checked, on
// the primitives of envelope.go's mpReader.
type v2Reader struct {
	mpReader
}

// take returns the next n bytes. Unlike mpReader.bytes it has no field
// cap of its own: a v2 frame's fields are bounded by the datagram.
func (d *v2Reader) take(n uint64) ([]byte, error) {
	if uint64(d.left()) < n {
		return nil, errTruncated
	}
	p := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return p, nil
}

func (d *v2Reader) value(depth int) (v2Val, error) {
	if depth > v2MaxDepth {
		return v2Val{}, fmt.Errorf("%w: nested deeper than %d", errV2Frame, v2MaxDepth)
	}
	c, err := d.byte()
	if err != nil {
		return v2Val{}, err
	}
	switch {
	case c <= 0x7f:
		return v2Val{kind: v2KindInt, num: float64(c)}, nil
	case c >= 0xe0:
		return v2Val{kind: v2KindInt, num: float64(int8(c))}, nil
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
		return v2Val{kind: v2KindNil}, nil
	case 0xc2, 0xc3:
		return v2Val{kind: v2KindBool, num: float64(c - 0xc2)}, nil
	case 0xc4, 0xc5, 0xc6: // bin 8/16/32
		if n, err = d.uintN(1 << (c - 0xc4)); err != nil {
			return v2Val{}, err
		}
		p, err := d.take(n)
		return v2Val{kind: v2KindBin, data: p}, err
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32
		if n, err = d.uintN(1 << (c - 0xc7)); err != nil {
			return v2Val{}, err
		}
		return d.ext(n)
	case 0xca:
		u, err := d.uintN(4)
		return v2Val{kind: v2KindFloat, num: float64(math.Float32frombits(uint32(u)))}, err
	case 0xcb:
		u, err := d.uintN(8)
		return v2Val{kind: v2KindFloat, num: math.Float64frombits(u)}, err
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8/16/32/64
		u, err := d.uintN(1 << (c - 0xcc))
		return v2Val{kind: v2KindInt, num: float64(u)}, err
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8/16/32/64
		w := 1 << (c - 0xd0)
		u, err := d.uintN(w)
		s := int64(u<<(64-8*w)) >> (64 - 8*w) // sign-extend
		return v2Val{kind: v2KindInt, num: float64(s)}, err
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1/2/4/8/16
		return d.ext(1 << (c - 0xd4))
	case 0xd9, 0xda, 0xdb: // str 8/16/32
		if n, err = d.uintN(1 << (c - 0xd9)); err != nil {
			return v2Val{}, err
		}
		return d.str(n)
	case 0xdc, 0xdd: // array 16/32
		if n, err = d.uintN(2 << (c - 0xdc)); err != nil {
			return v2Val{}, err
		}
		return d.array(n, depth)
	case 0xde, 0xdf: // map 16/32
		if n, err = d.uintN(2 << (c - 0xde)); err != nil {
			return v2Val{}, err
		}
		return d.mapv(n, depth)
	}
	return v2Val{}, fmt.Errorf("%w: invalid msgpack byte 0x%02x", errV2Frame, c)
}

func (d *v2Reader) str(n uint64) (v2Val, error) {
	p, err := d.take(n)
	if err != nil {
		return v2Val{}, err
	}
	if !utf8.Valid(p) { // raw=False decodes every str strictly
		return v2Val{}, fmt.Errorf("%w: str is not UTF-8", errV2Frame)
	}
	return v2Val{kind: v2KindStr, data: p}, nil
}

func (d *v2Reader) ext(n uint64) (v2Val, error) {
	t, err := d.byte()
	if err != nil {
		return v2Val{}, err
	}
	p, err := d.take(n)
	if err != nil {
		return v2Val{}, err
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
			return v2Val{}, fmt.Errorf("%w: timestamp ext of %d bytes", errV2Frame, len(p))
		}
		if nsec >= 1e9 {
			return v2Val{}, fmt.Errorf("%w: timestamp ext nanoseconds %d", errV2Frame, nsec)
		}
	}
	return v2Val{kind: v2KindExt, data: p}, nil
}

func (d *v2Reader) array(n uint64, depth int) (v2Val, error) {
	if n > uint64(d.left()) { // every element takes at least a byte
		return v2Val{}, errTruncated
	}
	for range n {
		if _, err := d.value(depth + 1); err != nil {
			return v2Val{}, err
		}
	}
	return v2Val{kind: v2KindArray, n: n}, nil
}

func (d *v2Reader) mapv(n uint64, depth int) (v2Val, error) {
	if n > uint64(d.left())/2 {
		return v2Val{}, errTruncated
	}
	for range n {
		k, err := d.value(depth + 1)
		if err != nil {
			return v2Val{}, err
		}
		if k.kind != v2KindStr && k.kind != v2KindBin { // strict_map_key
			return v2Val{}, fmt.Errorf("%w: map key of type %v", errV2Frame, k.kind)
		}
		if _, err := d.value(depth + 1); err != nil {
			return v2Val{}, err
		}
	}
	return v2Val{kind: v2KindMap, n: n}, nil
}

// ---------------------------------------------------------------- §7 padding

// v2EffectiveMTU is the reference's effective MTU for a host MTU M
// (§7): M − 107, the largest unpadded frame it sends and the size it pads
// to. The reference takes M as the smallest MTU of the up interfaces
// whose name does not start with "lo" (1500 if none), read once; loopback
// traffic is padded to that too. Unlike the reference, the result is
// capped so that a padded, sealed frame never exceeds the 48000 bytes a
// reference reads (§1.4): that only matters for M above 48042.
func v2EffectiveMTU(hostMTU int) int {
	return min(hostMTU-v2MTUDeduction, v2MaxDatagram-v2SealOverhead-1)
}

// v2PadLen is the number of padding bytes the reference puts in "g"
// (§7): the effective MTU minus the length of the frame built with an
// empty g. An unpadded frame longer than the effective MTU is the
// reference's MessageTooLargeError (errV2TooLarge): nothing is sent.
//
// Because g's header grows from c4 LL to c5 HH LL at 256 bytes, the padded
// frame is effMTU bytes long when the padding is at most 255 bytes and
// effMTU+1 bytes otherwise; sealing adds 64 (v2SealOverhead). Receivers
// ignore g, so padding is optional for interoperation.
func v2PadLen(effMTU, payloadLen, controlLen int) (int, error) {
	n := v2FrameLen(payloadLen, controlLen, 0)
	if n > effMTU {
		return 0, fmt.Errorf("%w: %d bytes (MTU: %d)", errV2TooLarge, n, effMTU)
	}
	return effMTU - n, nil
}

// appendV2PaddedFrame appends the frame of payload and control padded as
// the reference pads (v2PadLen) to the effective MTU effMTU. The padding
// bytes are read from rnd straight into dst: the reference uses fresh
// os.urandom bytes for every datagram (§7), so production passes
// crypto/rand.Reader; tests pass the vector's padding. A nil rnd pads with
// zeros (receivers ignore g; inside a box zeros are as good as random).
func appendV2PaddedFrame(dst, payload, control []byte, effMTU int, rnd io.Reader) ([]byte, error) {
	pad, err := v2PadLen(effMTU, len(payload), len(control))
	if err != nil {
		return dst, err
	}
	orig := len(dst)
	dst = appendV2Frame(dst, payload, control, nil)
	dst = dst[:len(dst)-2] // the empty g's c4 00
	dst = appendBinHeader(dst, pad)
	start := len(dst)
	dst = append(dst, make([]byte, pad)...)
	if rnd != nil {
		if _, err := io.ReadFull(rnd, dst[start:]); err != nil {
			return dst[:orig], fmt.Errorf("vaultudp: v2 padding: %w", err)
		}
	}
	return dst, nil
}

// ---------------------------------------------------------------- §4 payload

// v2Zstd compresses and decompresses the payload channel (§4). The
// reference compresses every payload, however small, as one zstd frame at
// libzstd level 16 with the content size in the header, no checksum, no
// dictionary id; "hello" becomes 28b52ffd 20 05 290000 68656c6c6f. We
// write the same frame parameters (single segment, so the content size is
// always in the header; no checksum; an empty payload still gives a 9-byte
// frame, which the reference delivers as ""), with klauspost's default
// level: its levels are not libzstd's, and the reference's decompressor
// reads any valid frame. For payloads up to 5 bytes (raw blocks) the bytes
// are identical to the reference's.
//
// Both methods are safe for concurrent use.
type v2Zstd struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func newV2Zstd() (*v2Zstd, error) {
	n := runtime.GOMAXPROCS(0)
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(n),
		zstd.WithEncoderCRC(false),
		zstd.WithSingleSegment(true),
		zstd.WithZeroFrames(true),
		zstd.WithWindowSize(1<<16),
	)
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(n),
		zstd.WithDecoderMaxMemory(v2MaxPayload), // also caps the window
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		enc.Close()
		return nil, err
	}
	return &v2Zstd{enc: enc, dec: dec}, nil
}

// compress appends the zstd frame of src to dst.
func (z *v2Zstd) compress(dst, src []byte) []byte { return z.enc.EncodeAll(src, dst) }

// decompress appends the decompressed p to dst[:0] and returns it. Like
// the reference it reads several concatenated frames and frames without a
// content size (§4); unlike it, it refuses output beyond v2MaxPayload
// bytes, before allocating it (a frame declaring a larger content size
// or window is refused at its header), with an error wrapping
// errTooLarge. dst should have a capacity of v2MaxPayload; a smaller one
// is replaced by a new buffer of that size. An empty p is not a payload
// (§4) and is an error here.
func (z *v2Zstd) decompress(dst, p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, fmt.Errorf("%w: empty v2 payload", errMalformed)
	}
	if cap(dst) < v2MaxPayload {
		dst = make([]byte, 0, v2MaxPayload)
	}
	out, err := z.dec.DecodeAll(p, dst[:0:v2MaxPayload])
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return nil, fmt.Errorf("%w: v2 payload over %d bytes", errTooLarge, v2MaxPayload)
		}
		return nil, fmt.Errorf("%w: v2 payload zstd: %v", errMalformed, err)
	}
	return out, nil
}

func (z *v2Zstd) close() {
	z.enc.Close()
	z.dec.Close()
}

// v2ReferenceDelivers reports whether a reference peer hands a payload to
// its application: only valid UTF-8 is delivered, as a text string (§4,
// §13f); anything else is dropped there with a warning. Go's utf8.Valid
// and Python's strict UTF-8 decoder agree (both reject surrogates,
// overlong forms and code points above U+10FFFF).
func v2ReferenceDelivers(payload []byte) bool { return utf8.Valid(payload) }

// ---------------------------------------------------------------- §5 control

// v2KeyExchange is the content of the control channel (§5.1), as carried:
//
//	{"enc_key": "<b64 44>", "sign_key": "<b64 44>", "signature": "<b64 204>", "port": <int>}
//
// enc_key is the X25519 box public key, sign_key the Ed25519 public key,
// signature the b64 of NaCl's combined signed message
// signature(64) ‖ ASCII(enc_key ‖ sign_key) (152 bytes), port the sender's
// listening port.
type v2KeyExchange struct {
	encKey, signKey string
	signature       string // "" when absent, null or empty
	port            int
	hasPort         bool
}

// appendV2KeyExchange appends the JSON exactly as the reference's
// json.dumps writes it (§5.1): members in the order enc_key, sign_key,
// signature, port; separators ", " and ": "; an empty signature as null;
// port omitted when !hasPort (the reference always sends it). The string
// members must need no JSON escaping (base64 never does).
func appendV2KeyExchange(dst []byte, kx *v2KeyExchange) []byte {
	dst = append(dst, `{"enc_key": "`...)
	dst = append(dst, kx.encKey...)
	dst = append(dst, `", "sign_key": "`...)
	dst = append(dst, kx.signKey...)
	dst = append(dst, `", "signature": `...)
	if kx.signature == "" {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '"')
		dst = append(dst, kx.signature...)
		dst = append(dst, '"')
	}
	if kx.hasPort {
		dst = append(dst, `, "port": `...)
		dst = strconv.AppendInt(dst, int64(kx.port), 10)
	}
	return append(dst, '}')
}

// decodeV2KeyExchange parses the control channel c (§5.2 steps 1–4). It
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
func decodeV2KeyExchange(c []byte) (v2KeyExchange, error) {
	var kx v2KeyExchange
	if !utf8.Valid(c) {
		return kx, fmt.Errorf("%w: not UTF-8", errV2Kx)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c, &m); err != nil || m == nil {
		return kx, fmt.Errorf("%w: not a JSON object", errV2Kx)
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"enc_key", &kx.encKey}, {"sign_key", &kx.signKey}} {
		raw, ok := m[f.name]
		if !ok || json.Unmarshal(raw, f.dst) != nil || *f.dst == "" {
			return kx, fmt.Errorf("%w: no %s string", errV2Kx, f.name)
		}
	}
	if raw, ok := m["signature"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &kx.signature); err != nil {
			return kx, fmt.Errorf("%w: signature is not a string", errV2Kx)
		}
	}
	if raw, ok := m["port"]; ok && isJSONInteger(raw) {
		p, err := strconv.ParseInt(string(raw), 10, 32)
		if err != nil || p < 1 || p > math.MaxUint16 {
			return kx, fmt.Errorf("%w: port %s", errV2Kx, raw)
		}
		kx.port, kx.hasPort = int(p), true
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

// v2PeerKeys are a v2 peer's public keys, decoded and verified.
type v2PeerKeys struct {
	box  [32]byte          // X25519 public key: enc_key
	sign ed25519.PublicKey // Ed25519 public key: sign_key
}

// v2B64 is the base64 of v2: standard alphabet with padding (§0). Decoding
// is strict (canonical padding bits); see v2DecodeB64.
var v2B64 = base64.StdEncoding.Strict()

// v2DecodeB64 decodes the b64 text of exactly n bytes: canonical, padded,
// nothing else in s (Go's decoder alone would skip \r and \n; the
// reference's skips every character outside the alphabet), so each value
// has exactly one text form.
func v2DecodeB64(s string, n int) ([]byte, bool) {
	if len(s) != v2B64.EncodedLen(n) {
		return nil, false
	}
	b, err := v2B64.DecodeString(s)
	return b, err == nil && len(b) == n
}

// verifyV2KeyExchange checks a key exchange and returns its keys. Unlike
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
func verifyV2KeyExchange(kx *v2KeyExchange) (v2PeerKeys, error) {
	var k v2PeerKeys
	enc, ok := v2DecodeB64(kx.encKey, 32)
	if !ok {
		return k, fmt.Errorf("%w: enc_key is not the base64 of 32 bytes", errAuth)
	}
	sign, ok := v2DecodeB64(kx.signKey, ed25519.PublicKeySize)
	if !ok {
		return k, fmt.Errorf("%w: sign_key is not the base64 of 32 bytes", errAuth)
	}
	if kx.signature == "" {
		return k, fmt.Errorf("%w: unsigned v2 key exchange", errAuth)
	}
	signed, ok := v2DecodeB64(kx.signature, ed25519.SignatureSize+len(kx.encKey)+len(kx.signKey))
	if !ok {
		return k, fmt.Errorf("%w: signature is not the base64 of a signed message over the keys", errAuth)
	}
	msg := signed[ed25519.SignatureSize:]
	if string(msg[:len(kx.encKey)]) != kx.encKey || string(msg[len(kx.encKey):]) != kx.signKey {
		return k, fmt.Errorf("%w: the signed message is not the keys it comes with", errAuth)
	}
	if !ed25519.Verify(sign, msg, signed[:ed25519.SignatureSize]) {
		return k, fmt.Errorf("%w: bad v2 key exchange signature", errAuth)
	}
	if _, err := curve25519.X25519(v2LowOrderProbe[:], enc); err != nil {
		return k, fmt.Errorf("%w: enc_key is a low-order point", errAuth)
	}
	copy(k.box[:], enc)
	k.sign = ed25519.PublicKey(sign)
	return k, nil
}

// v2LowOrderProbe is any scalar: X25519 clamps it to a multiple of the
// cofactor, so the result is all zeros, whatever the scalar, exactly when
// the point has low order.
var v2LowOrderProbe = [32]byte{1}

// v2KeyExchangeMatchesPeer reports whether a key exchange received from
// src belongs to the v2 peer configured at peer (its listening address)
// under our rule (§12.2, §13e): same IP (an IPv4-mapped address is the
// IPv4 address), and the advertised port is the peer's port — or, with
// no port advertised, the source is the peer's address. The reference's
// key exchanges come from its ephemeral sending port and advertise its
// listening port (§1.2), so the source port is not compared. A key
// exchange naming another port does not install keys for that port (the
// reference would, §13e).
func v2KeyExchangeMatchesPeer(src netip.AddrPort, kx *v2KeyExchange, peer netip.AddrPort) bool {
	if src.Addr().Unmap() != peer.Addr().Unmap() {
		return false
	}
	if kx.hasPort {
		return kx.port == int(peer.Port())
	}
	return src.Port() == peer.Port()
}

// v2ReferenceKeyAddress is where a reference peer files the keys of a key
// exchange it receives from src (§5.2.4): (source IP, port field) when
// the port is a JSON integer, else the source tuple. A Go peer that wants
// its sealed datagrams opened must send them from that address (§12.1).
func v2ReferenceKeyAddress(src netip.AddrPort, kx *v2KeyExchange) netip.AddrPort {
	if kx.hasPort {
		return netip.AddrPortFrom(src.Addr(), uint16(kx.port))
	}
	return src
}

// v2ReferenceClampPort is the port a reference application ends up using
// for recv_port and add_peer (§1.3): forced into [1500, 65000].
func v2ReferenceClampPort(port int) int {
	return min(max(port, v2ReferenceMinPort), v2ReferenceMaxPort)
}

// v2ProbeEncKey is an enc_key the reference stores but cannot seal with.
const v2ProbeEncKey = "AAAA"

// appendV2KeyProbe appends an optional "probe" key exchange: the sender's
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
func appendV2KeyProbe(dst []byte, signKey string, port int) []byte {
	return appendV2KeyExchange(dst, &v2KeyExchange{encKey: v2ProbeEncKey, signKey: signKey, port: port, hasPort: true})
}

// ---------------------------------------------------------------- keys

// v2Keys are our static v2 keys (§5.1, §10): an X25519 box key pair and
// an Ed25519 signing key, with their b64 text as carried in key
// exchanges.
type v2Keys struct {
	boxPrivate [32]byte
	boxPublic  [32]byte
	sign       ed25519.PrivateKey
	encKey     string // b64 of boxPublic
	signKey    string // b64 of the Ed25519 public key
}

// deriveV2Keys derives the v2 keys from the Ed25519 identity, so that one
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
func deriveV2Keys(identity ed25519.PrivateKey) *v2Keys {
	h := sha512.Sum512(identity.Seed())
	defer clear(h[:])
	var priv [32]byte
	copy(priv[:], h[:32])
	priv[0] &= 248
	priv[31] &= 127
	priv[31] |= 64
	return newV2Keys(&priv, identity)
}

// newV2Keys builds v2 keys from an explicit X25519 private key (the
// reference's enc_private, used as is: X25519 clamps) and Ed25519 key.
func newV2Keys(boxPrivate *[32]byte, sign ed25519.PrivateKey) *v2Keys {
	k := &v2Keys{boxPrivate: *boxPrivate, sign: sign}
	pub, err := curve25519.X25519(k.boxPrivate[:], curve25519.Basepoint)
	if err != nil {
		panic(err) // the base point times any scalar is never the identity
	}
	copy(k.boxPublic[:], pub)
	k.encKey = v2B64.EncodeToString(pub)
	k.signKey = v2B64.EncodeToString(sign.Public().(ed25519.PublicKey))
	return k
}

// keyExchange returns our key exchange (§5.1) advertising the listening
// port: the signature is NaCl's combined form over ASCII(enc_key ‖
// sign_key), as the reference signs (Ed25519 is deterministic, so this is
// byte for byte the reference's JSON for the same keys).
func (k *v2Keys) keyExchange(port int) *v2KeyExchange {
	msg := []byte(k.encKey + k.signKey)
	signed := append(ed25519.Sign(k.sign, msg), msg...)
	return &v2KeyExchange{
		encKey:    k.encKey,
		signKey:   k.signKey,
		signature: v2B64.EncodeToString(signed),
		port:      port,
		hasPort:   true,
	}
}

// sharedKey precomputes the NaCl box key with a peer's X25519 public key
// (box.Precompute: HSalsa20 of the X25519 result), for sealV2 and openV2
// in both directions. A low-order peer key, whose shared secret is all
// zeros, is refused, as libsodium refuses it.
func (k *v2Keys) sharedKey(peer *[32]byte) (*[32]byte, error) {
	if _, err := curve25519.X25519(k.boxPrivate[:], peer[:]); err != nil {
		return nil, fmt.Errorf("%w: v2 peer box key: %v", errAuth, err)
	}
	shared := new([32]byte)
	box.Precompute(shared, peer, &k.boxPrivate)
	return shared, nil
}

// ---------------------------------------------------------------- §6 sealing

// v2Inner is the opened box content (§6): the replay nonce, the sender's
// timestamp and the frame (aliasing the opened buffer).
type v2Inner struct {
	nonce [v2InnerNonceLen]byte
	ts    float64
	frame []byte
}

// appendV2InnerPrefix appends the 24-byte box plaintext prefix (§6): the
// 16 random bytes of the replay nonce (unrelated to the box nonce), then
// the send time in Unix seconds as a big-endian IEEE-754 double (Python
// struct '!d').
func appendV2InnerPrefix(dst []byte, nonce *[v2InnerNonceLen]byte, ts float64) []byte {
	dst = append(dst, nonce[:]...)
	return binary.BigEndian.AppendUint64(dst, math.Float64bits(ts))
}

// sealV2 appends the sealed datagram (§6)
//
//	box_nonce(24) ‖ tag(16) ‖ XSalsa20(inner_nonce(16) ‖ ts(8) ‖ frame)
//
// to dst: NaCl crypto_box with the precomputed shared key, the layout
// PyNaCl's Box.encrypt returns. The box nonce and the inner nonce must be
// fresh random bytes for every datagram (the reference draws both at
// random); ts comes from v2SendTimestamp. They are parameters so that the
// vectors reproduce.
func sealV2(dst []byte, shared *[32]byte, boxNonce *[v2BoxNonceLen]byte, innerNonce *[v2InnerNonceLen]byte, ts float64, frame []byte) []byte {
	plain := make([]byte, 0, v2InnerLen+len(frame))
	plain = append(appendV2InnerPrefix(plain, innerNonce, ts), frame...)
	dst = append(dst, boxNonce[:]...)
	return box.SealAfterPrecomputation(dst, plain, boxNonce, shared)
}

// openV2 opens a sealed datagram with the shared key of the peer it is
// supposed to come from, appending the box content to dst (§6 steps 1–2).
// It fails (errAuth) on any authentication failure, and (errMalformed)
// when the datagram is too short or the content shorter than the 24-byte
// prefix. The caller then checks the timestamp and the nonce with a
// v2ReplayCache before decoding the frame. Per §6/§11, a failure is not
// final: the same datagram may still be a plaintext frame.
func openV2(dst []byte, shared *[32]byte, datagram []byte) (v2Inner, error) {
	var in v2Inner
	if len(datagram) < v2BoxOverhead {
		return in, fmt.Errorf("%w: v2 sealed datagram of %d bytes", errMalformed, len(datagram))
	}
	var nonce [v2BoxNonceLen]byte
	copy(nonce[:], datagram)
	out, ok := box.OpenAfterPrecomputation(dst, datagram[v2BoxNonceLen:], &nonce, shared)
	if !ok {
		return in, fmt.Errorf("%w: v2 box", errAuth)
	}
	plain := out[len(dst):]
	if len(plain) < v2InnerLen {
		return in, fmt.Errorf("%w: v2 box content of %d bytes", errMalformed, len(plain))
	}
	copy(in.nonce[:], plain)
	in.ts = math.Float64frombits(binary.BigEndian.Uint64(plain[v2InnerNonceLen:]))
	in.frame = plain[v2InnerLen:]
	return in, nil
}

// ---------------------------------------------------------------- time

// v2UnixSeconds is t as the reference's time.time(): Unix seconds as a
// float64 with sub-second precision.
func v2UnixSeconds(t time.Time) float64 {
	return float64(t.Unix()) + float64(t.Nanosecond())/1e9
}

// v2SendTimestamp is the timestamp to seal into a datagram sent at now
// (§6, §12.1). The reference accepts it iff 0 ≤ its_now − ts ≤ 60 s: a
// timestamp ahead of its clock by any amount is rejected (measured: 50 ms
// already is). Rule: stamp now − 30 s (v2SendBackdate), the middle of its
// window, so the datagram is accepted as long as the reference's clock is
// no more than 30 s behind ours and no more than 30 s minus the transit
// time ahead. The earlier stamp also halves how long a captured datagram
// can be replayed to a reference that lost its nonce cache (§13d).
func v2SendTimestamp(now time.Time) float64 {
	return v2UnixSeconds(now.Add(-v2SendBackdate))
}

// v2ReferenceAcceptsTimestamp is the reference's freshness rule (§6 step
// 3) at its clock refNow: age = refNow − ts, accepted iff 0 ≤ age ≤ 60
// (float compare). (A NaN timestamp passes there; it never comes from us.)
func v2ReferenceAcceptsTimestamp(ts float64, refNow time.Time) bool {
	age := v2UnixSeconds(refNow) - ts
	return !(age < 0 || age > v2MaxAge.Seconds())
}

// ---------------------------------------------------------------- §8 replay

// v2ReplayCache is our replay protection for the sealed datagrams of one
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
type v2ReplayCache struct {
	capacity          int
	maxAge, maxFuture float64 // seconds
	seen              map[[v2InnerNonceLen]byte]struct{}
	ring              []v2ReplayEntry // circular, insertion order; grows to capacity
	head, n           int
	floor             float64
}

type v2ReplayEntry struct {
	nonce [v2InnerNonceLen]byte
	ts    float64
}

// newV2ReplayCache returns a cache of at most capacity nonces (at least
// 1; v2ReplayCapacity is the default) with the window of v2MaxAge into
// the past and v2MaxFuture into the future.
func newV2ReplayCache(capacity int) *v2ReplayCache {
	capacity = max(capacity, 1)
	return &v2ReplayCache{
		capacity:  capacity,
		maxAge:    v2MaxAge.Seconds(),
		maxFuture: v2MaxFuture.Seconds(),
		seen:      make(map[[v2InnerNonceLen]byte]struct{}, min(capacity, 64)),
		floor:     math.Inf(-1),
	}
}

// v2AddedAllowance is how far before the moment a v2 peer was added a
// timestamp may lie and still be accepted from it (see
// newV2PeerReplayCache): the v2SendBackdate a Go peer stamps its
// datagrams with. The reference itself allows no clock skew into the
// future (§6 step 3) and stamps its own clock at sending, so a reference
// peer's datagrams pass from the start as long as its clock is at most
// this much behind ours.
const v2AddedAllowance = v2SendBackdate

// newV2PeerReplayCache is the replay cache of a v2 peer added at added
// (by AddPeer, or by Listen and Wrap for Config.Peers): its floor starts
// at added − v2AddedAllowance instead of minus infinity, so that a sealed
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
func newV2PeerReplayCache(capacity int, added time.Time) *v2ReplayCache {
	c := newV2ReplayCache(capacity)
	c.floor = v2UnixSeconds(added.Add(-v2AddedAllowance))
	return c
}

// check accepts the nonce and timestamp of an opened datagram at now and
// remembers the nonce, or rejects it (errReplay) changing nothing.
func (c *v2ReplayCache) check(nonce *[v2InnerNonceLen]byte, ts float64, now time.Time) error {
	t := v2UnixSeconds(now)
	age := t - ts
	if !(age <= c.maxAge && age >= -c.maxFuture) { // also NaN
		return fmt.Errorf("%w: age %.3fs", errV2Stale, age)
	}
	for c.n > 0 && c.ring[c.head].ts < t-c.maxAge {
		c.drop()
	}
	if ts <= c.floor {
		return fmt.Errorf("%w: v2 timestamp at or below the replay floor", errReplay)
	}
	if _, dup := c.seen[*nonce]; dup {
		return fmt.Errorf("%w: v2 nonce seen", errReplay)
	}
	if c.n == len(c.ring) {
		if len(c.ring) < c.capacity {
			c.grow()
		} else {
			c.drop()
		}
	}
	c.ring[(c.head+c.n)%len(c.ring)] = v2ReplayEntry{nonce: *nonce, ts: ts}
	c.n++
	c.seen[*nonce] = struct{}{}
	return nil
}

// drop forgets the oldest entry, raising the floor to its timestamp.
func (c *v2ReplayCache) drop() {
	e := &c.ring[c.head]
	c.floor = max(c.floor, e.ts)
	delete(c.seen, e.nonce)
	c.head = (c.head + 1) % len(c.ring)
	c.n--
}

func (c *v2ReplayCache) grow() {
	ring := make([]v2ReplayEntry, min(max(2*len(c.ring), 16), c.capacity))
	for i := range c.n {
		ring[i] = c.ring[(c.head+i)%len(c.ring)]
	}
	c.ring, c.head = ring, 0
}

// len is the number of nonces remembered.
func (c *v2ReplayCache) len() int { return c.n }
