package vaultudp

import (
	"fmt"
	"math"

	"github.com/vaultudp/vaultudp/internal/msgp"
)

// The envelope is the inner record of every datagram, sealed or open: a
// msgpack map with single-letter string keys.
//
//	"v"  uint     envelope version, 3 (any msgpack uint encoding is read)
//	"p"  bin      the user's datagram, present iff the envelope carries one
//	     ext 1    the same, zstd-compressed (one frame, content size set)
//	"c"  bin      one control message (handshake, cookie, reset token,
//	              path challenge or response), absent if none
//	"g"  bin      padding, zeros when written, ignored when read
//
// The writer emits the keys in that order with the shortest encodings,
// except that the padding length field may be wider to hit an exact size.
// The reader accepts any order and encoding widths, ignores unknown keys
// whose values are well-formed msgpack (forward compatibility), and rejects
// everything else: truncation, trailing bytes, wrong types, duplicate keys,
// non-string keys, more than maxEnvelopeKeys entries, nesting deeper than
// maxSkipDepth. PROTOCOL.md gives the bytes.
//
// The msgpack codec here is written by hand rather than through
// github.com/vmihailenco/msgpack/v5: the record is four fixed fields, and
// the hand-written codec is strict (duplicates, unknown types), zero-copy
// (payload and control alias the input) and allocation-free; the tests
// check it against msgpack/v5 both ways.

const (
	envelopeVersion = 3

	// extZstd is the msgpack ext type of a zstd-compressed payload. A
	// reader that does not know it sees a wrong type and drops the
	// datagram rather than deliver compressed bytes as data.
	extZstd = 1

	maxEnvelopeKeys = 16
	maxSkipDepth    = 8
)

// record is a decoded envelope. Its slices alias the bytes it was parsed
// from.
type record struct {
	payload    []byte // the user's datagram (compressed if compressed)
	hasPayload bool   // an empty datagram is a datagram; its absence is not
	compressed bool
	control    []byte // nil if none
	padding    int    // length of the "g" field read; informational
}

// binHeaderLen and extHeaderLen are the shortest bin and ext header
// lengths for n bytes (the native code's names for the shared helpers).
func binHeaderLen(n int) int { return msgp.BinHeaderLen(n) }
func extHeaderLen(n int) int { return msgp.ExtHeaderLen(n) }

// envelopeLen is the exact length of the unpadded envelope appendTo writes.
func (r *record) envelopeLen() int {
	n := 1 + 3 // map header, "v" and its fixint
	if r.hasPayload {
		if r.compressed {
			n += 2 + extHeaderLen(len(r.payload)) + len(r.payload)
		} else {
			n += 2 + binHeaderLen(len(r.payload)) + len(r.payload)
		}
	}
	if r.control != nil {
		n += 2 + binHeaderLen(len(r.control)) + len(r.control)
	}
	return n
}

// minPadField is the smallest "g" entry: its key and an empty bin8.
const minPadField = 4

// appendTo appends the envelope to dst, exactly size bytes long when size
// is larger than the unpadded envelope: by a "g" field of zeros when there
// are minPadField bytes of room or more, and for 1 to 3 bytes of room by
// wider encodings of "v" and of the first bin field's header (valid
// msgpack the reader accepts), so that padding to the MTU gives every
// sealed datagram one length. The one case left short is an envelope with
// neither payload nor control and 3 bytes of room. With size at or below
// the unpadded length, the envelope is unpadded.
func (r *record) appendTo(dst []byte, size int) []byte {
	base := r.envelopeLen()
	pad := size - base
	entries := 1
	if r.hasPayload {
		entries++
	}
	if r.control != nil {
		entries++
	}
	var vWide, fieldWide int // extra bytes in "v" and in the first field's header
	switch {
	case pad >= minPadField:
		entries++
	case pad > 0:
		vWide, fieldWide = widen(pad, r.firstFieldHeaderLen())
	}
	dst = append(dst, 0x80|byte(entries), 0xa1, 'v')
	switch vWide {
	case 0:
		dst = append(dst, envelopeVersion)
	case 1:
		dst = append(dst, msgp.Uint8, envelopeVersion)
	case 2:
		dst = append(dst, msgp.Uint16, 0, envelopeVersion)
	}
	if r.hasPayload {
		dst = append(dst, 0xa1, 'p')
		hdr := binHeaderLen(len(r.payload)) + fieldWide
		if r.compressed {
			dst = msgp.AppendExtHeaderWidth(dst, extZstd, len(r.payload), hdr)
		} else {
			dst = msgp.AppendBinHeaderWidth(dst, len(r.payload), hdr)
		}
		dst = append(dst, r.payload...)
		fieldWide = 0
	}
	if r.control != nil {
		dst = append(dst, 0xa1, 'c')
		dst = msgp.AppendBinHeaderWidth(dst, len(r.control), binHeaderLen(len(r.control))+fieldWide)
		dst = append(dst, r.control...)
	}
	if pad >= minPadField {
		dst = append(dst, 0xa1, 'g')
		// Pick the header width that makes the total exact.
		var n int
		switch {
		case pad-4 <= math.MaxUint8:
			n = pad - 4
		case pad-5 <= math.MaxUint16:
			n = pad - 5
		default:
			n = pad - 7
		}
		dst = msgp.AppendBinHeaderWidth(dst, n, pad-2-n)
		dst = appendZeros(dst, n)
	}
	return dst
}

// firstFieldHeaderLen is the shortest header length of the first bin
// field after "v" (payload, else control), 0 if there is none.
func (r *record) firstFieldHeaderLen() int {
	switch {
	case r.hasPayload:
		return binHeaderLen(len(r.payload))
	case r.control != nil:
		return binHeaderLen(len(r.control))
	}
	return 0
}

// widen splits 1 to 3 bytes of padding between a wider "v" (fixint to
// uint8: +1, to uint16: +2) and a wider header of the first field, whose
// shortest header is hdr bytes (2 to 3: +1, 3 to 5: +2).
func widen(pad, hdr int) (vWide, fieldWide int) {
	switch {
	case pad <= 2:
		return pad, 0
	case hdr == 2:
		return 2, 1
	case hdr == 3:
		return 1, 2
	}
	return 0, 0 // no field to widen: leave it short
}

func appendZeros(dst []byte, n int) []byte {
	l := len(dst)
	if cap(dst)-l >= n {
		dst = dst[:l+n]
		clear(dst[l:])
		return dst
	}
	return append(dst, make([]byte, n)...)
}

// parseRecord decodes an envelope. The returned slices alias b. It never
// panics and never allocates.
func parseRecord(b []byte) (record, error) {
	var r record
	d := mpReader{msgp.Reader{B: b}}
	n, err := d.mapLen()
	if err != nil {
		return r, err
	}
	if n > maxEnvelopeKeys {
		return r, fmt.Errorf("%w: %d map entries", errMalformed, n)
	}
	var seen uint8 // bit per known key
	const (
		seenV = 1 << iota
		seenP
		seenC
		seenG
	)
	for i := 0; i < n; i++ {
		key, err := d.str()
		if err != nil {
			return r, err
		}
		var bit uint8
		if len(key) == 1 {
			switch key[0] {
			case 'v':
				bit = seenV
			case 'p':
				bit = seenP
			case 'c':
				bit = seenC
			case 'g':
				bit = seenG
			}
		}
		if bit != 0 && seen&bit != 0 {
			return r, fmt.Errorf("%w: duplicate key %q", errMalformed, key)
		}
		seen |= bit
		switch bit {
		case seenV:
			v, err := d.uint()
			if err != nil {
				return r, err
			}
			if v != envelopeVersion {
				return r, fmt.Errorf("%w: envelope version %d", errMalformed, v)
			}
		case seenP:
			p, ext, err := d.binOrExt()
			if err != nil {
				return r, err
			}
			switch ext {
			case -1:
			case extZstd:
				r.compressed = true
			default:
				return r, fmt.Errorf("%w: payload ext type %d", errMalformed, ext)
			}
			r.payload, r.hasPayload = p, true
		case seenC:
			c, err := d.bin()
			if err != nil {
				return r, err
			}
			r.control = c
		case seenG:
			g, err := d.bin()
			if err != nil {
				return r, err
			}
			r.padding = len(g)
		default:
			if err := d.skip(0); err != nil {
				return r, err
			}
		}
	}
	if seen&seenV == 0 {
		return r, fmt.Errorf("%w: no version", errMalformed)
	}
	if d.Off != len(b) {
		return r, fmt.Errorf("%w: %d trailing bytes", errMalformed, len(b)-d.Off)
	}
	return r, nil
}

// mpReader reads the envelope's msgpack values, bounds-checked, on the
// shared primitives.
type mpReader struct {
	msgp.Reader
}

var errTruncated = msgp.ErrTruncated

func (d *mpReader) mapLen() (int, error) {
	c, err := d.Byte()
	if err != nil {
		return 0, err
	}
	n, ok, err := d.MapHeader(c)
	if !ok {
		return 0, fmt.Errorf("%w: envelope is not a map (0x%02x)", errMalformed, c)
	}
	if n > maxEnvelopeKeys {
		return 0, fmt.Errorf("%w: %d map entries", errMalformed, n)
	}
	return int(n), err
}

func (d *mpReader) str() ([]byte, error) {
	c, err := d.Byte()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c == msgp.Str8:
		n, err = d.UintN(1)
	case c == msgp.Str16:
		n, err = d.UintN(2)
	case c == msgp.Str32:
		n, err = d.UintN(4)
	default:
		return nil, fmt.Errorf("%w: key is not a string (0x%02x)", errMalformed, c)
	}
	if err != nil {
		return nil, err
	}
	return d.Bytes(n)
}

func (d *mpReader) uint() (uint64, error) {
	c, err := d.Byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return uint64(c), nil
	case c == msgp.Uint8:
		return d.UintN(1)
	case c == msgp.Uint16:
		return d.UintN(2)
	case c == msgp.Uint32:
		return d.UintN(4)
	case c == msgp.Uint64:
		return d.UintN(8)
	}
	return 0, fmt.Errorf("%w: version is not an unsigned integer (0x%02x)", errMalformed, c)
}

func (d *mpReader) bin() ([]byte, error) {
	p, ext, err := d.binOrExt()
	if err == nil && ext != -1 {
		err = fmt.Errorf("%w: ext where bin expected", errMalformed)
	}
	return p, err
}

// binOrExt reads a bin (ext = -1) or an ext value (ext = its type).
func (d *mpReader) binOrExt() (p []byte, ext int, err error) {
	c, err := d.Byte()
	if err != nil {
		return nil, -1, err
	}
	var n uint64
	ext = -1
	switch c {
	case msgp.Bin8:
		n, err = d.UintN(1)
	case msgp.Bin16:
		n, err = d.UintN(2)
	case msgp.Bin32:
		n, err = d.UintN(4)
	case msgp.Ext8, msgp.Ext16, msgp.Ext32:
		n, err = d.UintN(1 << (c - msgp.Ext8))
		if err == nil {
			var t byte
			t, err = d.Byte()
			ext = int(int8(t))
		}
	default:
		return nil, -1, fmt.Errorf("%w: not bin (0x%02x)", errMalformed, c)
	}
	if err != nil {
		return nil, -1, err
	}
	p, err = d.Bytes(n)
	return p, ext, err
}

// skip steps over one well-formed msgpack value of any type.
func (d *mpReader) skip(depth int) error {
	if depth > maxSkipDepth {
		return fmt.Errorf("%w: nesting deeper than %d", errMalformed, maxSkipDepth)
	}
	c, err := d.Byte()
	if err != nil {
		return err
	}
	var n uint64
	switch {
	case c <= 0x7f, c >= 0xe0, c == msgp.Nil, c == msgp.False, c == msgp.True:
		return nil
	case c&0xe0 == 0xa0:
		_, err = d.Bytes(uint64(c & 0x1f))
		return err
	case c&0xf0 == 0x90, c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
		if c&0xf0 == 0x80 {
			n *= 2
		}
		return d.skipN(n, depth)
	}
	switch c {
	case msgp.Bin8, msgp.Str8:
		n, err = d.UintN(1)
	case msgp.Bin16, msgp.Str16:
		n, err = d.UintN(2)
	case msgp.Bin32, msgp.Str32:
		n, err = d.UintN(4)
	case msgp.Ext8, msgp.Ext16, msgp.Ext32:
		n, err = d.UintN(1 << (c - msgp.Ext8))
		n++ // the type byte
	case msgp.Float32, msgp.Uint32, msgp.Int32:
		n = 4
	case msgp.Float64, msgp.Uint64, msgp.Int64:
		n = 8
	case msgp.Uint8, msgp.Int8:
		n = 1
	case msgp.Uint16, msgp.Int16:
		n = 2
	case msgp.Array16, msgp.Array32, msgp.Map16, msgp.Map32:
		w := 2
		if c == msgp.Array32 || c == msgp.Map32 {
			w = 4
		}
		if n, err = d.UintN(w); err != nil {
			return err
		}
		if c == msgp.Map16 || c == msgp.Map32 {
			n *= 2
		}
		return d.skipN(n, depth)
	default:
		if c >= msgp.FixExt1 && c <= msgp.FixExt16 {
			n = 1 + 1<<(c-msgp.FixExt1) // type byte and 1, 2, 4, 8 or 16 bytes
			break
		}
		return fmt.Errorf("%w: unknown msgpack type 0x%02x", errMalformed, c)
	}
	if err != nil {
		return err
	}
	_, err = d.Bytes(n)
	return err
}

func (d *mpReader) skipN(n uint64, depth int) error {
	// Every element takes at least one byte: more elements than bytes
	// left is truncated, and checking first bounds the loop.
	if n > uint64(d.Left()) {
		return errTruncated
	}
	for i := uint64(0); i < n; i++ {
		if err := d.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}
