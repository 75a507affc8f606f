package v2

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"time"
	"unicode/utf8"

	"github.com/vaultudp/vaultudp/internal/errs"
	"github.com/vaultudp/vaultudp/internal/msgp"
	"github.com/vaultudp/vaultudp/internal/zstd"
)

// A model of the reference for the tests: what it does that the Conn
// does not do (its padding from a random source, its receive rules) and
// the bounded payload codec the tests read and write payloads with.

// padLen is the number of padding bytes the reference puts in "g"
// (§7): the effective MTU minus the length of the frame built with an
// empty g. An unpadded frame longer than the effective MTU is the
// reference's MessageTooLargeError (errFrameTooLarge): nothing is sent.
//
// Because g's header grows from c4 LL to c5 HH LL at 256 bytes, the padded
// frame is effMTU bytes long when the padding is at most 255 bytes and
// effMTU+1 bytes otherwise; sealing adds 64 (SealOverhead). Receivers
// ignore g, so padding is optional for interoperation.
func padLen(effMTU, payloadLen, controlLen int) (int, error) {
	n := FrameLen(payloadLen, controlLen, 0)
	if n > effMTU {
		return 0, fmt.Errorf("%w: %d bytes (MTU: %d)", errFrameTooLarge, n, effMTU)
	}
	return effMTU - n, nil
}

// appendPaddedFrame appends the frame of payload and control padded as
// the reference pads (padLen) to the effective MTU effMTU. The padding
// bytes are read from rnd straight into dst: the reference uses fresh
// os.urandom bytes for every datagram (§7), so production passes
// crypto/rand.Reader; tests pass the vector's padding. A nil rnd pads with
// zeros (receivers ignore g; inside a box zeros are as good as random).
func appendPaddedFrame(dst, payload, control []byte, effMTU int, rnd io.Reader) ([]byte, error) {
	pad, err := padLen(effMTU, len(payload), len(control))
	if err != nil {
		return dst, err
	}
	orig := len(dst)
	dst = AppendFrame(dst, payload, control, nil)
	dst = dst[:len(dst)-2] // the empty g's c4 00
	dst = msgp.AppendBinHeader(dst, pad)
	start := len(dst)
	dst = append(dst, make([]byte, pad)...)
	if rnd != nil {
		if _, err := io.ReadFull(rnd, dst[start:]); err != nil {
			return dst[:orig], fmt.Errorf("vaultudp: v2 padding: %w", err)
		}
	}
	return dst, nil
}

// referenceDelivers reports whether a reference peer hands a payload to
// its application: only valid UTF-8 is delivered, as a text string (§4,
// §13f); anything else is dropped there with a warning. Go's utf8.Valid
// and Python's strict UTF-8 decoder agree (both reject surrogates,
// overlong forms and code points above U+10FFFF).
func referenceDelivers(payload []byte) bool { return utf8.Valid(payload) }

// referenceAcceptsTimestamp is the reference's freshness rule (§6 step
// 3) at its clock refNow: age = refNow − ts, accepted iff 0 ≤ age ≤ 60
// (float compare). (A NaN timestamp passes there; it never comes from us.)
func referenceAcceptsTimestamp(ts float64, refNow time.Time) bool {
	age := UnixSeconds(refNow) - ts
	return !(age < 0 || age > MaxAge.Seconds())
}

// referenceKeyAddress is where a reference peer files the keys of a key
// exchange it receives from src (§5.2.4): (source IP, port field) when
// the port is a JSON integer, else the source tuple. A Go peer that wants
// its sealed datagrams opened must send them from that address (§12.1).
func referenceKeyAddress(src netip.AddrPort, kx *KeyExchange) netip.AddrPort {
	if kx.HasPort {
		return netip.AddrPortFrom(src.Addr(), uint16(kx.Port))
	}
	return src
}

// refMaxPayload caps a decompressed payload in the tests' codec: the
// reference has no cap at all; this one only makes zip bombs harmless.
const refMaxPayload = 48000

// zstdCodec compresses as the Conn does for v2 peers and decompresses up
// to refMaxPayload bytes.
type zstdCodec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func newZstdCodec() (*zstdCodec, error) {
	enc, err := zstd.NewEncoder(zstd.SpeedDefault)
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewDecoder(refMaxPayload)
	if err != nil {
		enc.Close()
		return nil, err
	}
	return &zstdCodec{enc: enc, dec: dec}, nil
}

func (z *zstdCodec) compress(dst, src []byte) []byte { return z.enc.Compress(dst, src) }

// decompress appends the decompressed p to a buffer of refMaxPayload
// bytes (dst if it is one). An empty p is not a payload (§4).
func (z *zstdCodec) decompress(dst, p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, fmt.Errorf("%w: empty v2 payload", errs.ErrMalformed)
	}
	if cap(dst) < refMaxPayload {
		dst = make([]byte, 0, refMaxPayload)
	}
	return z.dec.Decompress(dst, p)
}

func (z *zstdCodec) close() {
	z.enc.Close()
	z.dec.Close()
}

// generateIdentity is a fresh Ed25519 key.
func generateIdentity() ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}
