package vaultudp

import (
	"sync"
	"sync/atomic"

	"github.com/vaultudp/vaultudp/internal/zstd"
)

// Compression says when payloads are compressed.
type Compression int

const (
	// CompressAuto, the zero value, compresses a payload when padding
	// lets the saving show on the wire (Padding is PadNone or a block
	// size) and the compressed form is smaller. With the default padding
	// to the MTU every sealed datagram has the same size anyway, so
	// compressing would cost CPU for nothing.
	CompressAuto Compression = iota
	// CompressNever never compresses. Received compressed payloads are
	// still read.
	CompressNever
	// CompressAlways tries every payload, whatever the padding, and keeps
	// the compressed form only when it is smaller.
	CompressAlways
)

// minCompressLen is the payload size below which compression is not tried:
// a zstd frame has about 10 bytes of framing, so small payloads do not
// shrink.
const minCompressLen = 64

// minCompressMaxPayload is the smallest MaxPayload at which payloads are
// compressed: a zstd window is at least 1 KiB, and the decoder's bound
// refuses larger windows than MaxPayload.
const minCompressMaxPayload = 1024

// compressor compresses and decompresses payloads with one reused zstd
// encoder and decoder (both safe for concurrent use), each made on first
// use: making them costs about a millisecond, and a Conn that pads to the
// MTU (the default) never compresses and rarely decompresses, while Listen
// should be quick. Decompression is bounded: a frame that would inflate
// past max bytes is refused before anything is allocated for it. Protocol
// v2 decompresses with the same decoder, so that its payloads have the
// same bound.
type compressor struct {
	max int

	encOnce sync.Once
	enc     *zstd.Encoder
	decOnce sync.Once
	dec     *zstd.Decoder
	decErr  error
}

func newCompressor(max int) (*compressor, error) { return &compressor{max: max}, nil }

// compress appends the compressed form of src to dst.
func (z *compressor) compress(dst, src []byte) []byte {
	z.encOnce.Do(func() {
		var err error
		if z.enc, err = zstd.NewEncoder(zstd.SpeedFastest); err != nil {
			panic(err) // fixed, valid options: cannot happen
		}
	})
	return z.enc.Compress(dst, src)
}

// decompress appends the decompressed form of src to dst[:0], which must
// have capacity for max bytes; no more is ever written or allocated.
func (z *compressor) decompress(dst, src []byte) ([]byte, error) {
	z.decOnce.Do(func() { z.dec, z.decErr = zstd.NewDecoder(z.max) })
	if z.decErr != nil {
		return nil, z.decErr
	}
	return z.dec.Decompress(dst, src)
}

// close releases the encoder and decoder; the Conn is closed, and its
// goroutines that used them have ended.
func (z *compressor) close() {
	z.encOnce.Do(func() {})
	z.decOnce.Do(func() {})
	if z.enc != nil {
		z.enc.Close()
	}
	if z.dec != nil {
		z.dec.Close()
	}
}

// compressSkip stops trying zstd on a peer's payloads while they do not
// shrink (random or already compressed data, where each try costs about
// as much as the seal): after k failures in a row, the next 2^min(k,6)-1
// payloads go as they are, so one in 64 is still tried, and a success
// starts over. Its counters are a heuristic: races between writers only
// move when the next try comes. The zero value tries every payload; a nil
// one too.
type compressSkip struct {
	fails, skip atomic.Int32
}

// try reports whether the next payload should be tried.
func (z *compressSkip) try() bool {
	if z == nil || z.skip.Load() <= 0 {
		return true
	}
	z.skip.Add(-1)
	return false
}

// result records whether a try shrank the payload.
func (z *compressSkip) result(shrank bool) {
	if z == nil {
		return
	}
	if shrank {
		if z.fails.Load() != 0 {
			z.fails.Store(0)
		}
		return
	}
	f := min(z.fails.Add(1), 6)
	z.skip.Store(1<<f - 1)
}
