// Package zstd is the bounded zstd codec both protocols use: one reused
// encoder and decoder, safe for concurrent use, writing single-segment
// frames (content size in the header, no checksum) and refusing, before
// allocating anything for it, a frame that would inflate past its bound.
package zstd

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"
	"github.com/vaultudp/vaultudp/internal/errs"
)

// Level is an encoder level.
type Level = zstd.EncoderLevel

// Encoder levels: SpeedFastest for native payloads, SpeedDefault for
// protocol v2's (the reference compresses at libzstd level 16).
const (
	SpeedFastest = zstd.SpeedFastest
	SpeedDefault = zstd.SpeedDefault
)

// Encoder writes zstd frames: one frame per call, single segment (the
// content size is in the header, read before decoding), no checksum (the
// AEAD or box authenticates the payload), window of 64 KiB, and a frame
// even for empty input.
type Encoder struct {
	enc *zstd.Encoder
}

// NewEncoder returns an encoder at level.
func NewEncoder(level Level) (*Encoder, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(1<<16),
		zstd.WithZeroFrames(true),
		zstd.WithSingleSegment(true),
	)
	if err != nil {
		return nil, err
	}
	return &Encoder{enc: enc}, nil
}

// Compress appends the zstd frame of src to dst.
func (e *Encoder) Compress(dst, src []byte) []byte { return e.enc.EncodeAll(src, dst) }

// Close releases the encoder.
func (e *Encoder) Close() { e.enc.Close() }

// Decoder reads zstd frames, at most max bytes of output per call: it
// reads several concatenated frames and frames without a content size,
// and refuses a frame that declares a larger content size or window at
// its header.
type Decoder struct {
	dec *zstd.Decoder
	max int
}

// minWindow is the smallest zstd window.
const minWindow = 1 << 10

// NewDecoder returns a decoder bounded by bound bytes.
func NewDecoder(bound int) (*Decoder, error) {
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
		// The memory bound also bounds the window, and no window is
		// smaller than 1 KiB: below that every frame would be refused.
		// The output is bounded by the capacity given to DecodeAll.
		zstd.WithDecoderMaxMemory(uint64(max(bound, minWindow))),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(1<<17),
	)
	if err != nil {
		return nil, err
	}
	return &Decoder{dec: dec, max: bound}, nil
}

// Max is the decoder's bound.
func (d *Decoder) Max() int { return d.max }

// Decompress appends the decompressed form of src to dst[:0] and returns
// it: at most min(Max, cap(dst)) bytes, no more ever written or
// allocated. Output beyond that is an error wrapping errs.ErrTooLarge; bytes
// that are not zstd, one wrapping errs.ErrMalformed.
func (d *Decoder) Decompress(dst, src []byte) ([]byte, error) {
	limit := min(d.max, cap(dst))
	out, err := d.dec.DecodeAll(src, dst[:0:limit])
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return nil, fmt.Errorf("%w: over %d bytes", errs.ErrTooLarge, limit)
		}
		return nil, fmt.Errorf("%w: zstd: %v", errs.ErrMalformed, err)
	}
	return out, nil
}

// Close releases the decoder.
func (d *Decoder) Close() { d.dec.Close() }
