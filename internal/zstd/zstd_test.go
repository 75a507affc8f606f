package zstd

import (
	"bytes"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/vaultudp/vaultudp/internal/errs"
)

// TestDecoderBounds: output stops at min(Max, cap(dst)); a frame that
// would inflate past it, or declares a window past the decoder's, is
// ErrTooLarge; bytes that are no zstd are ErrMalformed; a frame of
// nothing is the empty payload.
func TestDecoderBounds(t *testing.T) {
	enc, err := NewEncoder(SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	dec, err := NewDecoder(1000)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	p := bytes.Repeat([]byte("0123456789"), 100)
	out, err := dec.Decompress(make([]byte, 0, 4096), enc.Compress(nil, p))
	if err != nil || !bytes.Equal(out, p) {
		t.Fatalf("1000 bytes: %v", err)
	}
	if _, err := dec.Decompress(make([]byte, 0, 4096), enc.Compress(nil, append(p, 'x'))); !errors.Is(err, errs.ErrTooLarge) {
		t.Fatalf("1001 bytes: %v, want ErrTooLarge", err)
	}
	if _, err := dec.Decompress(make([]byte, 0, 500), enc.Compress(nil, p)); !errors.Is(err, errs.ErrTooLarge) {
		t.Fatalf("1000 bytes into a 500-byte buffer: %v, want ErrTooLarge", err)
	}
	w, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20), zstd.WithSingleSegment(false))
	var stream bytes.Buffer
	w.Reset(&stream)
	w.Write(make([]byte, 1<<20))
	w.Close()
	if _, err := dec.Decompress(make([]byte, 0, 4096), stream.Bytes()); !errors.Is(err, errs.ErrTooLarge) {
		t.Fatalf("8 MiB window: %v, want ErrTooLarge", err)
	}
	if _, err := dec.Decompress(make([]byte, 0, 4096), []byte("not zstd")); !errors.Is(err, errs.ErrMalformed) {
		t.Fatalf("garbage: %v, want ErrMalformed", err)
	}
	if out, err := dec.Decompress(make([]byte, 0, 16), enc.Compress(nil, nil)); err != nil || len(out) != 0 {
		t.Fatalf("empty: %q, %v", out, err)
	}
}
