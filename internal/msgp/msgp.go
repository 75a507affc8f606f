// Package msgp holds the msgpack primitives the native envelope and the
// protocol v2 frame are both written and read with: format bytes, bin and
// ext headers, and a bounds-checked reader. Each protocol builds its own
// strict decoder on Reader.
package msgp

import (
	"fmt"
	"math"

	"github.com/vaultudp/vaultudp/internal/errs"
)

// Format bytes.
const (
	Nil      = 0xc0
	False    = 0xc2
	True     = 0xc3
	Bin8     = 0xc4
	Bin16    = 0xc5
	Bin32    = 0xc6
	Ext8     = 0xc7
	Ext16    = 0xc8
	Ext32    = 0xc9
	Float32  = 0xca
	Float64  = 0xcb
	Uint8    = 0xcc
	Uint16   = 0xcd
	Uint32   = 0xce
	Uint64   = 0xcf
	Int8     = 0xd0
	Int16    = 0xd1
	Int32    = 0xd2
	Int64    = 0xd3
	FixExt1  = 0xd4
	FixExt16 = 0xd8
	Str8     = 0xd9
	Str16    = 0xda
	Str32    = 0xdb
	Array16  = 0xdc
	Array32  = 0xdd
	Map16    = 0xde
	Map32    = 0xdf
)

// MaxFieldLen bounds every field Reader.Bytes returns: no datagram is
// larger, so a longer length prefix is malformed however much input
// follows.
const MaxFieldLen = 65535

// ErrTruncated is the error of a read past the end of the input.
var ErrTruncated = fmt.Errorf("%w: truncated", errs.ErrMalformed)

// BinHeaderLen is the length of the shortest bin header for n bytes.
func BinHeaderLen(n int) int {
	switch {
	case n <= math.MaxUint8:
		return 2
	case n <= math.MaxUint16:
		return 3
	default:
		return 5
	}
}

// ExtHeaderLen is the length of the shortest ext header for n bytes.
func ExtHeaderLen(n int) int {
	return BinHeaderLen(n) + 1
}

// AppendBinHeader appends the shortest bin header for n bytes: c4 LL,
// c5 HH LL or c6 and 4 bytes.
func AppendBinHeader(dst []byte, n int) []byte {
	return AppendBinHeaderWidth(dst, n, BinHeaderLen(n))
}

// AppendBinHeaderWidth appends a bin header for n bytes that is width
// bytes long (2, 3 or 5), at least as wide as n needs.
func AppendBinHeaderWidth(dst []byte, n, width int) []byte {
	switch width {
	case 2:
		return append(dst, Bin8, byte(n))
	case 3:
		return append(dst, Bin16, byte(n>>8), byte(n))
	default:
		return append(dst, Bin32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// AppendExtHeaderWidth appends an ext header of type typ for n bytes;
// width is the width of the matching bin header (the ext header is one
// byte more, for the type).
func AppendExtHeaderWidth(dst []byte, typ int8, n, width int) []byte {
	switch width {
	case 2:
		return append(dst, Ext8, byte(n), byte(typ))
	case 3:
		return append(dst, Ext16, byte(n>>8), byte(n), byte(typ))
	default:
		return append(dst, Ext32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n), byte(typ))
	}
}

// Reader reads msgpack from B, bounds-checked: every method fails with an
// error wrapping ErrTruncated rather than read past the end. It never
// panics and never allocates.
type Reader struct {
	B   []byte
	Off int // bytes read so far
}

// Left is the number of bytes not read yet.
func (d *Reader) Left() int { return len(d.B) - d.Off }

// Byte reads one byte.
func (d *Reader) Byte() (byte, error) {
	if d.Off >= len(d.B) {
		return 0, ErrTruncated
	}
	c := d.B[d.Off]
	d.Off++
	return c, nil
}

// UintN reads an n-byte big-endian unsigned integer.
func (d *Reader) UintN(n int) (uint64, error) {
	if len(d.B)-d.Off < n {
		return 0, ErrTruncated
	}
	var v uint64
	for _, c := range d.B[d.Off : d.Off+n] {
		v = v<<8 | uint64(c)
	}
	d.Off += n
	return v, nil
}

// Bytes returns the next n bytes, at most MaxFieldLen.
func (d *Reader) Bytes(n uint64) ([]byte, error) {
	if n > MaxFieldLen {
		return nil, fmt.Errorf("%w: field of %d bytes", errs.ErrMalformed, n)
	}
	return d.Take(n)
}

// Take returns the next n bytes, bounded only by the input. The slice
// aliases B, with its capacity cut at its end.
func (d *Reader) Take(n uint64) ([]byte, error) {
	if uint64(len(d.B)-d.Off) < n {
		return nil, ErrTruncated
	}
	p := d.B[d.Off : d.Off+int(n) : d.Off+int(n)]
	d.Off += int(n)
	return p, nil
}

// MapHeader reads a map header (fixmap, map 16, map 32) and returns the
// number of entries. c is the format byte, already read; ok is false
// when it is no map header.
func (d *Reader) MapHeader(c byte) (n uint64, ok bool, err error) {
	switch {
	case c&0xf0 == 0x80:
		return uint64(c & 0x0f), true, nil
	case c == Map16:
		n, err = d.UintN(2)
	case c == Map32:
		n, err = d.UintN(4)
	default:
		return 0, false, nil
	}
	return n, true, err
}
