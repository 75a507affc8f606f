package msgp

import (
	"bytes"
	"errors"
	"testing"
)

// TestHeaders: the shortest bin header for each size, exactly as long as
// BinHeaderLen says, and ext headers one byte longer.
func TestHeaders(t *testing.T) {
	for _, c := range []struct {
		n    int
		want []byte
	}{{0, []byte{Bin8, 0}}, {255, []byte{Bin8, 0xff}}, {256, []byte{Bin16, 1, 0}}, {65535, []byte{Bin16, 0xff, 0xff}}, {65536, []byte{Bin32, 0, 1, 0, 0}}} {
		if got := AppendBinHeader(nil, c.n); !bytes.Equal(got, c.want) || len(got) != BinHeaderLen(c.n) {
			t.Errorf("bin %d: % x", c.n, got)
		}
		if got := AppendExtHeaderWidth(nil, 1, c.n, BinHeaderLen(c.n)); len(got) != ExtHeaderLen(c.n) || got[len(got)-1] != 1 {
			t.Errorf("ext %d: % x", c.n, got)
		}
	}
}

// TestReader: reads are bounds-checked, Bytes caps fields at MaxFieldLen
// while Take does not, and map headers of every width are read.
func TestReader(t *testing.T) {
	d := Reader{B: []byte{0x83, Map16, 0, 5, Map32, 0, 0, 0, 7, 0xa1}}
	for _, want := range []uint64{3, 5, 7} {
		c, _ := d.Byte()
		if n, ok, err := d.MapHeader(c); !ok || err != nil || n != want {
			t.Fatalf("map header: %d %v %v, want %d", n, ok, err, want)
		}
	}
	c, _ := d.Byte()
	if _, ok, _ := d.MapHeader(c); ok {
		t.Fatal("a fixstr read as a map header")
	}
	if _, err := d.Byte(); !errors.Is(err, ErrTruncated) {
		t.Fatalf("past the end: %v", err)
	}
	if _, err := d.UintN(1); !errors.Is(err, ErrTruncated) {
		t.Fatalf("past the end: %v", err)
	}
	big := Reader{B: make([]byte, MaxFieldLen+1)}
	if _, err := big.Bytes(MaxFieldLen + 1); err == nil || errors.Is(err, ErrTruncated) {
		t.Fatalf("Bytes over MaxFieldLen: %v", err)
	}
	if p, err := big.Take(MaxFieldLen + 1); err != nil || len(p) != MaxFieldLen+1 || cap(p) != len(p) || big.Left() != 0 {
		t.Fatalf("Take: %d bytes, %v", len(p), err)
	}
}
