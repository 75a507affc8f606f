package vaultudp

import (
	"bytes"
	"testing"
)

// replayFuzzCounter derives the next counter from one 3-byte fuzz record: an
// op byte and a little-endian uint16 v. The low 3 bits of op pick a move
// relative to the previous counter prev or to the highest counter accepted
// so far (taken from the model, never from the window under test); counters
// wrap modulo 2^64, which also lands some of them at or past counterLimit.
func replayFuzzCounter(op byte, v uint16, prev, highest uint64) uint64 {
	switch op & 7 {
	case 0: // small step forward; 0 repeats prev
		return prev + uint64(v&0xff)
	case 1: // small step back: reordering
		return prev - uint64(v&0xff)
	case 2: // anywhere in, or up to one window behind, the window
		return highest - uint64(v)%(2*replayWindowSize)
	case 3: // the trailing edge of the window, -2..+2 around the first too-old counter
		return highest - replayWindowSize - 2 + uint64(v%5)
	case 4: // slide forward by up to 8 laps of the ring
		return highest + uint64(v)
	case 5: // big jump, by v<<0 up to v<<31
		return prev + uint64(v)<<(op>>3)
	case 6: // around the hard limit
		return counterLimit - 4 + uint64(v%8)
	default: // back to a small absolute counter
		return uint64(v)
	}
}

// FuzzReplayWindow decodes its input, 3 bytes at a time, into a sequence of
// counters (see replayFuzzCounter) and checks that replayWindow agrees
// exactly with replayModel on every one; then that every accepted counter is
// rejected when replayed.
func FuzzReplayWindow(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 2, 0, 1, 1, 0})          // steps, a repeat, reordering
	f.Add([]byte{4, 0xc0, 0x1f, 3, 0, 0, 3, 1, 0, 3, 2, 0, 3, 3, 0, 3, 4, 0, 3, 2, 0})    // h=8128, then its edge
	f.Add([]byte{4, 0x00, 0x20, 2, 0x10, 0, 4, 0x01, 0x20, 1, 0x40, 0, 2, 0xff, 0x3f})    // laps of the ring
	f.Add([]byte{0xfd, 0xff, 0xff, 2, 0x80, 0, 7, 5, 0, 0, 0, 0, 2, 0x80, 0})             // far jump, old ones
	f.Add([]byte{6, 0, 0, 6, 1, 0, 6, 2, 0, 6, 3, 0, 6, 4, 0, 6, 5, 0, 6, 3, 0, 3, 0, 0}) // the hard limit
	f.Add([]byte{1, 5, 0, 1, 0xff, 0, 0, 9, 0, 2, 0x90, 0x3f})                            // wrap below zero
	f.Fuzz(func(t *testing.T, data []byte) {
		var w replayWindow
		m := newReplayModel()
		var c uint64
		for i := 0; i+3 <= len(data); i += 3 {
			c = replayFuzzCounter(data[i], uint16(data[i+1])|uint16(data[i+2])<<8, c, m.highest)
			want := m.check(c)
			if got := w.checkAndUpdate(c); got != (want == replayFresh) {
				t.Fatalf("record %d: checkAndUpdate(%d) = %v, model says %v (highest %d)", i/3, c, got, want, m.highest)
			}
		}
		for c := range m.seen {
			if w.checkAndUpdate(c) {
				t.Fatalf("accepted counter %d accepted again", c)
			}
		}
	})
}

// FuzzEnvelopeDecode: parseRecord never panics, and anything it accepts
// re-encodes to bytes that decode to the same record.
func FuzzEnvelopeDecode(f *testing.F) {
	f.Add((&record{payload: []byte("hello"), hasPayload: true}).appendTo(nil, 64))
	f.Add((&record{payload: []byte{1, 2, 3}, hasPayload: true, compressed: true, control: []byte{1}}).appendTo(nil, 0))
	f.Add((&record{control: []byte{3, 0, 0, 0, 1}}).appendTo(nil, 0))
	f.Add([]byte{0x84, 0xa1, 'v', 3, 0xa1, 'x', 0x92, 0xc0, 0xc3, 0xa1, 'p', 0xc4, 0, 0xa1, 'g', 0xc5, 0, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := parseRecord(in)
		if err != nil {
			return
		}
		enc := r.appendTo(nil, 0)
		r2, err := parseRecord(enc)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if r2.hasPayload != r.hasPayload || r2.compressed != r.compressed ||
			!bytes.Equal(r2.payload, r.payload) || !bytes.Equal(r2.control, r.control) ||
			(r2.control == nil) != (r.control == nil) {
			t.Fatalf("round trip changed the record: %+v -> %+v", r, r2)
		}
	})
}
