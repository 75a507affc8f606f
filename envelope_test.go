package vaultudp

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vaultudp/vaultudp/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// testPayload returns n bytes, compressible (text-like) or random.
func testPayload(n int, compressible bool, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	p := make([]byte, n)
	if !compressible {
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return p
	}
	words := []string{"vault ", "udp ", "datagram ", "the ", "key ", "session ", "peer "}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
	}
	copy(p, b.Bytes())
	return p
}

func TestEnvelopeRoundTrip(t *testing.T) {
	parallel(t)
	z := testCompressor(t)
	const datagram = 1452
	max := maxPayloadFor(datagram)
	sizes := []int{0, 1, 64, 255, 256, 512, 1200, max}
	paddings := []Padding{PadMTU, PadNone, PadBlock(16), PadBlock(256), PadBlock(1)}
	for _, n := range sizes {
		for _, compressible := range []bool{false, true} {
			for _, pad := range paddings {
				name := fmt.Sprintf("%d/compressible=%v/%v", n, compressible, pad)
				t.Run(name, func(t *testing.T) {
					p := testPayload(n, compressible, uint64(n))
					r := record{payload: p, hasPayload: true}
					if compressible && n >= minCompressLen {
						c := z.compress(nil, p)
						if len(c) < len(p) {
							r.payload, r.compressed = c, true
						}
					}
					natural := sealedOverhead + r.envelopeLen()
					size := pad.wireSize(natural, datagram) - sealedOverhead
					enc := r.appendTo(nil, size)
					if size > r.envelopeLen() && len(enc) != size {
						t.Fatalf("padded envelope is %d bytes, want %d", len(enc), size)
					}
					if size <= r.envelopeLen() && len(enc) != r.envelopeLen() {
						t.Fatalf("envelope is %d bytes, want about %d", len(enc), size)
					}
					got, err := parseRecord(enc)
					if err != nil {
						t.Fatalf("parse: %v", err)
					}
					if !got.hasPayload || got.compressed != r.compressed {
						t.Fatalf("flags: hasPayload=%v compressed=%v", got.hasPayload, got.compressed)
					}
					pl := got.payload
					if got.compressed {
						pl, err = z.decompress(make([]byte, 0, 65535), pl)
						if err != nil {
							t.Fatal(err)
						}
					}
					if !bytes.Equal(pl, p) {
						t.Fatal("payload changed in the round trip")
					}
					// The padding is zeros.
					if i := bytes.LastIndex(enc, []byte{0xa1, 'g'}); got.padding > 0 && !bytes.Equal(enc[len(enc)-got.padding:], make([]byte, got.padding)) {
						t.Fatalf("padding at %d is not zeros", i)
					}
				})
			}
		}
	}
}

// The exact-size guarantee holds for every gap, across the bin8/bin16
// boundaries of the padding and payload headers, for small and large
// payloads, plain and compressed.
func TestEnvelopePaddingExact(t *testing.T) {
	parallel(t)
	for _, r := range []record{
		{payload: []byte("x"), hasPayload: true},
		{payload: make([]byte, 300), hasPayload: true},
		{payload: make([]byte, 300), hasPayload: true, compressed: true},
		{control: make([]byte, 10)},
		{payload: []byte{}, hasPayload: true, control: []byte{1}},
	} {
		base := r.envelopeLen()
		for size := base; size <= msgp.MaxFieldLen; size++ {
			if size > base+600 && size < msgp.MaxFieldLen-600 {
				size = msgp.MaxFieldLen - 600
			}
			enc := r.appendTo(nil, size)
			if len(enc) != size {
				t.Fatalf("%d-byte payload, size %d: got %d bytes", len(r.payload), size, len(enc))
			}
			got, err := parseRecord(enc)
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			if got.hasPayload != r.hasPayload || got.compressed != r.compressed ||
				!bytes.Equal(got.payload, r.payload) || !bytes.Equal(got.control, r.control) {
				t.Fatalf("size %d: decoded %+v", size, got)
			}
		}
	}
	// The one case left short: nothing but "v" and 1 to 3 bytes of room
	// (and even then 1 and 2 are absorbed).
	var empty record
	for gap := 1; gap <= 3; gap++ {
		enc := empty.appendTo(nil, empty.envelopeLen()+gap)
		if _, err := parseRecord(enc); err != nil {
			t.Fatal(err)
		}
		if want := empty.envelopeLen() + min(gap, 2); gap == 3 && len(enc) != empty.envelopeLen() || gap < 3 && len(enc) != want {
			t.Fatalf("empty record, gap %d: %d bytes", gap, len(enc))
		}
	}
}

// Our bytes decode with msgpack/v5, and msgpack/v5's bytes decode with ours.
func TestEnvelopeMsgpackInterop(t *testing.T) {
	parallel(t)
	r := record{payload: []byte("hello"), hasPayload: true, control: []byte{1, 2, 3}}
	enc := r.appendTo(nil, 100)
	var m map[string]any
	if err := msgpack.Unmarshal(enc, &m); err != nil {
		t.Fatalf("msgpack/v5 cannot read our envelope: %v", err)
	}
	if v, ok := m["v"].(int8); !ok || v != 3 {
		t.Fatalf("v = %#v", m["v"])
	}
	if p, ok := m["p"].([]byte); !ok || string(p) != "hello" {
		t.Fatalf("p = %#v", m["p"])
	}
	if g, ok := m["g"].([]byte); !ok || len(enc) != 100 || !bytes.Equal(g, make([]byte, len(g))) {
		t.Fatalf("g = %#v (len %d)", m["g"], len(enc))
	}

	theirs, err := msgpack.Marshal(map[string]any{
		"v": uint64(3), "p": []byte("payload"), "c": []byte{9},
		"x": map[string]any{"nested": []any{1, "two", 3.5, nil, true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseRecord(theirs)
	if err != nil {
		t.Fatalf("cannot read msgpack/v5's envelope: %v", err)
	}
	if string(got.payload) != "payload" || !bytes.Equal(got.control, []byte{9}) {
		t.Fatalf("got %+v", got)
	}
}

func TestEnvelopeEmptyAndAbsentPayload(t *testing.T) {
	parallel(t)
	for _, r := range []record{{hasPayload: true}, {hasPayload: false, control: []byte{}}, {}} {
		got, err := parseRecord(r.appendTo(nil, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got.hasPayload != r.hasPayload || len(got.payload) != 0 || (got.control == nil) != (r.control == nil) {
			t.Fatalf("%+v decoded as %+v", r, got)
		}
	}
}

func mp(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every class of malformed input is rejected with errMalformed, never a
// panic.
func TestEnvelopeMalformed(t *testing.T) {
	parallel(t)
	valid := (&record{payload: []byte("abc"), hasPayload: true}).appendTo(nil, 0)
	cases := map[string][]byte{
		"empty":              {},
		"not a map":          mp(t, []any{1, 2}),
		"nil":                {msgp.Nil},
		"no version":         mp(t, map[string]any{"p": []byte("x")}),
		"wrong version":      mp(t, map[string]any{"v": 2, "p": []byte("x")}),
		"version is string":  mp(t, map[string]any{"v": "3"}),
		"version negative":   {0x81, 0xa1, 'v', 0xff},
		"payload is string":  mp(t, map[string]any{"v": 3, "p": "text"}),
		"payload is int":     mp(t, map[string]any{"v": 3, "p": 1}),
		"payload nil":        mp(t, map[string]any{"v": 3, "p": nil}),
		"payload ext 2":      {0x82, 0xa1, 'v', 3, 0xa1, 'p', msgp.Ext8, 1, 2, 0},
		"control is array":   mp(t, map[string]any{"v": 3, "c": []any{1}}),
		"control is ext":     {0x82, 0xa1, 'v', 3, 0xa1, 'c', msgp.Ext8, 1, 1, 0},
		"padding is str":     mp(t, map[string]any{"v": 3, "g": "zzzz"}),
		"duplicate v":        {0x82, 0xa1, 'v', 3, 0xa1, 'v', 3},
		"duplicate p":        {0x83, 0xa1, 'v', 3, 0xa1, 'p', msgp.Bin8, 0, 0xa1, 'p', msgp.Bin8, 0},
		"duplicate g":        {0x83, 0xa1, 'v', 3, 0xa1, 'g', msgp.Bin8, 0, 0xa1, 'g', msgp.Bin8, 0},
		"integer key":        {0x82, 0xa1, 'v', 3, 0x01, 0x02},
		"too many keys":      append([]byte{msgp.Map16, 0, 17}, valid[1:]...),
		"map32 huge":         {msgp.Map32, 0xff, 0xff, 0xff, 0xff},
		"trailing byte":      append(append([]byte{}, valid...), 0),
		"truncated header":   valid[:1],
		"truncated payload":  valid[:len(valid)-1],
		"bin length lies":    {0x82, 0xa1, 'v', 3, 0xa1, 'p', msgp.Bin32, 0xff, 0xff, 0xff, 0xff, 1},
		"bin over 64k":       append([]byte{0x82, 0xa1, 'v', 3, 0xa1, 'p', msgp.Bin32, 0, 1, 0, 0}, make([]byte, 65536)...),
		"unknown key bad":    {0x82, 0xa1, 'v', 3, 0xa1, 'x', 0xc1},
		"unknown key trunc":  {0x82, 0xa1, 'v', 3, 0xa1, 'x', msgp.Array16, 0, 5, 1},
		"unknown deep":       append(append([]byte{0x82, 0xa1, 'v', 3, 0xa1, 'x'}, bytes.Repeat([]byte{0x91}, 20)...), 1),
		"unknown arr32 huge": {0x82, 0xa1, 'v', 3, 0xa1, 'x', msgp.Array32, 0xff, 0xff, 0xff, 0xff},
		"key truncated":      {0x81, 0xa5, 'v'},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := parseRecord(in)
			if !errors.Is(err, errMalformed) {
				t.Fatalf("err = %v, want errMalformed", err)
			}
		})
	}
}

// Unknown keys with well-formed values of every msgpack type are ignored.
func TestEnvelopeUnknownKeysIgnored(t *testing.T) {
	parallel(t)
	in := mp(t, map[string]any{
		"v": 3, "p": []byte("data"),
		"future":  map[string]any{"a": []any{int64(-5), uint64(1 << 40), float32(1.5), 2.5, "s", []byte{1}, false}},
		"another": msgpack.RawMessage{msgp.FixExt16 - 1, 7, 1, 2, 3, 4, 5, 6, 7, 8}, // fixext8
	})
	got, err := parseRecord(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.payload) != "data" {
		t.Fatalf("payload %q", got.payload)
	}
}

func TestCompressorBounded(t *testing.T) {
	parallel(t)
	z := testCompressor(t)
	// A zip bomb: 60 KB of zeros compress to a few bytes but inflate past
	// a 1 KB limit.
	bomb := z.compress(nil, make([]byte, 60000))
	if _, err := z.decompress(make([]byte, 0, 1024), bomb); !errors.Is(err, errTooLarge) {
		t.Fatalf("bomb: err = %v, want errTooLarge", err)
	}
	// The limit is the compressor's max even when the buffer is larger.
	small, err := newCompressor(1000)
	if err != nil {
		t.Fatal(err)
	}
	defer small.close()
	if _, err := small.decompress(make([]byte, 0, 65536), bomb); !errors.Is(err, errTooLarge) {
		t.Fatalf("bomb past max: err = %v, want errTooLarge", err)
	}
	if _, err := z.decompress(make([]byte, 0, 1024), []byte("not zstd at all")); !errors.Is(err, errMalformed) {
		t.Fatalf("garbage: err = %v, want errMalformed", err)
	}
	p := testPayload(1000, true, 1)
	out, err := z.decompress(make([]byte, 0, 1024), z.compress(nil, p))
	if err != nil || !bytes.Equal(out, p) {
		t.Fatalf("round trip: %v", err)
	}
}

func TestEnvelopeZeroAlloc(t *testing.T) {
	p := testPayload(1200, false, 3)
	buf := make([]byte, 0, 2048)
	r := record{payload: p, hasPayload: true}
	allocs := testing.AllocsPerRun(100, func() {
		enc := r.appendTo(buf[:0], 1400)
		if _, err := parseRecord(enc); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per encode+decode, want 0", allocs)
	}
}

func testCompressor(t testing.TB) *compressor {
	t.Helper()
	z, err := newCompressor(65535)
	if err != nil {
		t.Fatal(err)
	}
	ret := z
	t.Cleanup(func() { z.close(); z = nil }) // forgotten: see closeAtEnd
	return ret
}

func BenchmarkEnvelope(b *testing.B) {
	z := testCompressor(b)
	for _, n := range []int{64, 512, 1200} {
		for _, compressible := range []bool{false, true} {
			kind := "random"
			if compressible {
				kind = "text"
			}
			p := testPayload(n, compressible, 1)
			buf := make([]byte, 0, 2048)
			b.Run(fmt.Sprintf("encode/%s/%dB", kind, n), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(n))
				r := record{payload: p, hasPayload: true}
				for b.Loop() {
					_ = r.appendTo(buf[:0], 1400)
				}
			})
			b.Run(fmt.Sprintf("decode/%s/%dB", kind, n), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(n))
				enc := (&record{payload: p, hasPayload: true}).appendTo(nil, 1400)
				for b.Loop() {
					if _, err := parseRecord(enc); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("compress+encode/%s/%dB", kind, n), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(n))
				zbuf := make([]byte, 0, 2048)
				for b.Loop() {
					r := record{payload: p, hasPayload: true}
					if c := z.compress(zbuf[:0], p); len(c) < len(p) {
						r.payload, r.compressed = c, true
					}
					_ = r.appendTo(buf[:0], 0)
				}
			})
			b.Run(fmt.Sprintf("decode+decompress/%s/%dB", kind, n), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(n))
				r := record{payload: p, hasPayload: true}
				if c := z.compress(nil, p); len(c) < len(p) {
					r.payload, r.compressed = c, true
				}
				enc := r.appendTo(nil, 0)
				out := make([]byte, 0, 65535)
				for b.Loop() {
					got, err := parseRecord(enc)
					if err != nil {
						b.Fatal(err)
					}
					if got.compressed {
						if _, err := z.decompress(out, got.payload); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}
