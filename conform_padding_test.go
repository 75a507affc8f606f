package vaultudp

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"testing"
)

// TestConformRelay1452: two Conns with the default config talk through a
// UDP relay that reads into 1452-byte buffers, as quic-go's own test proxy
// and relays sized for QUIC do. Every datagram whose sealed length fits
// 1452 bytes arrives, both ways: with PadMTU, small datagrams are padded
// to 1452, not to the route's size (1472 on loopback, after the peer's
// stated receive size), which the relay cut, so that the session lost
// every datagram (issue 25). A datagram larger than the relay's buffer is
// cut by it, as a plain UDP datagram of that size would be; the receiver
// sees that it was cut (it ends inside its own padding) and counts it as
// Drops.Truncated, not as a forgery.
func TestConformRelay1452(t *testing.T) {
	parallel(t)
	client, server := pair(t, "udp4", "127.0.0.1", nil, nil)
	relay := newUDPRelay(t, addrOf(client), addrOf(server), 1452, false)
	fit := maxPayloadFor(padSmall) // 1411: sealed, exactly 1452
	for _, size := range []int{0, 1, 100, 1000, 1200, 1252, fit} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := client.WriteToUDPAddrPort(msg, relay.addr()); err != nil {
			t.Fatalf("client, %d bytes: %v", size, err)
		}
		if got, from := readWithin(t, server, waitLong); !bytes.Equal(got, msg) || from != relay.addr() {
			t.Fatalf("server read %d bytes from %v, want the %d written, from the relay", len(got), from, size)
		}
		if _, err := server.WriteToUDPAddrPort(msg, relay.addr()); err != nil {
			t.Fatalf("server, %d bytes: %v", size, err)
		}
		if got, from := readWithin(t, client, waitLong); !bytes.Equal(got, msg) || from != relay.addr() {
			t.Fatalf("client read %d bytes from %v, want the %d written, from the relay", len(got), from, size)
		}
	}
	cut, longest, forwards := relay.counts()
	t.Logf("through a relay reading 1452 bytes: %d datagrams forwarded, the longest %d bytes, %d cut", forwards, longest, cut)
	if cut != 0 || longest > 1452 {
		t.Errorf("the relay cut %d datagrams, the longest %d bytes", cut, longest)
	}

	// One byte more than fits: sealed, 1453 bytes (padded to the route's
	// 1472). The relay cuts it; the server counts it as cut.
	before := server.Stats()
	big := bytes.Repeat([]byte{7}, fit+1)
	if _, err := client.WriteToUDPAddrPort(big, relay.addr()); err != nil {
		t.Fatal(err)
	}
	// Then one that fits, on the same path: once it is read, the cut one
	// has been handled.
	if _, err := client.WriteToUDPAddrPort([]byte("after"), relay.addr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "after", relay.addr())
	after := server.Stats()
	t.Logf("a %d-byte datagram through the relay: truncated %d, auth %d", len(big),
		after.Drops.Truncated-before.Drops.Truncated, after.Drops.Auth-before.Drops.Auth)
	if after.Drops.Truncated != before.Drops.Truncated+1 || after.Drops.Auth != before.Drops.Auth {
		t.Errorf("the cut datagram: Drops.Truncated %d -> %d, Drops.Auth %d -> %d: want one more truncated, no auth",
			before.Drops.Truncated, after.Drops.Truncated, before.Drops.Auth, after.Drops.Auth)
	}
}

// TestConformTruncatedOrForged: a sealed datagram cut short on the way is
// told from a forgery. Through a relay that cuts or alters the next
// sealed datagram: cut inside its padding (a small datagram, padded to
// 1452, through a 1300-byte buffer), cut inside its payload (the
// envelope's own header says it is longer), a flipped bit, and a cut that
// removes only part of the tag (not recognised: counted as failed
// authentication, as before).
func TestConformTruncatedOrForged(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	r := newRelay(t, addrOf(a), addrOf(b))
	if _, err := a.WriteToUDPAddrPort([]byte("hello"), r.addr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "hello", r.addr())
	// Round trips until b has validated the relay's address (its path
	// challenge and a's answer crossed the relay), so that nothing but
	// the written datagram crosses it when it tampers.
	for _, m := range []string{"ping", "pong"} {
		if _, err := b.WriteToUDPAddrPort([]byte(m), r.addr()); err != nil {
			t.Fatal(err)
		}
		readWithin(t, a, waitLong)
		if _, err := a.WriteToUDPAddrPort([]byte(m), r.addr()); err != nil {
			t.Fatal(err)
		}
		expectRead(t, b, m, r.addr())
	}
	cutTo := func(n int) func([]byte) [][]byte {
		return func(d []byte) [][]byte { return [][]byte{d[:min(n, len(d))]} }
	}
	for _, c := range []struct {
		name      string
		payload   int
		tamper    func([]byte) [][]byte
		truncated bool
	}{
		{"cut inside its padding", 100, cutTo(1300), true},
		{"cut inside its payload", 1400, cutTo(1300), true},
		{"cut at 1452 (1472 on the wire)", 1420, cutTo(1452), true},
		{"cut to 64 bytes", 1000, cutTo(64), true},
		{"a bit flipped", 100, func(d []byte) [][]byte { d[len(d)-1] ^= 1; return [][]byte{d} }, false},
		{"a bit flipped in the ciphertext", 100, func(d []byte) [][]byte { d[40] ^= 1; return [][]byte{d} }, false},
		{"cut by 8 bytes, inside the tag", 100, func(d []byte) [][]byte { return [][]byte{d[:len(d)-8]} }, false},
	} {
		before := b.Stats().Drops
		done := r.tamperNext(c.tamper)
		if _, err := a.WriteToUDPAddrPort(bytes.Repeat([]byte{9}, c.payload), r.addr()); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, done, "the relay's tampering")
		if _, err := a.WriteToUDPAddrPort([]byte("after"), r.addr()); err != nil {
			t.Fatal(err)
		}
		expectRead(t, b, "after", r.addr())
		after := b.Stats().Drops
		gotT, gotA := after.Truncated-before.Truncated, after.Auth-before.Auth
		wantT, wantA := uint64(0), uint64(1)
		if c.truncated {
			wantT, wantA = 1, 0
		}
		if gotT != wantT || gotA != wantA {
			t.Errorf("%s: truncated +%d, auth +%d; want +%d, +%d", c.name, gotT, gotA, wantT, wantA)
		}
	}
}

// TestConformPadSizes: PadMTU's lengths for a target t (the path's and the
// peer's smaller datagram) and a limit: 1452 for what fits it (or t, if
// smaller), t for what fits t, multiples of t above.
func TestConformPadSizes(t *testing.T) {
	parallel(t)
	for _, c := range []struct{ n, t, limit, want int }{
		{36, 1472, 1472, 1452},
		{1452, 1472, 1472, 1452},
		{1453, 1472, 1472, 1472},
		{1472, 1472, 65507, 1472},
		{1473, 1472, 65507, 2944},
		{36, 65507, 65507, 1452}, // loopback's route with a peer that receives everything
		{1453, 8972, 8972, 8972}, // jumbo frames both ends
		{36, 1232, 1232, 1232},   // IPv6 at 1280: the target is smaller
		{1233, 1232, 1472, 1472},
	} {
		if got := PadMTU.paddedSize(c.n, c.t, c.limit); got != c.want {
			t.Errorf("PadMTU.paddedSize(%d, target %d, limit %d) = %d, want %d", c.n, c.t, c.limit, got, c.want)
		}
	}
	// PadBlock and PadNone are as they were.
	if got := PadBlock(64).paddedSize(100, 1472, 1472); got != 128 {
		t.Errorf("PadBlock(64): %d, want 128", got)
	}
	if got := PadNone.paddedSize(100, 1472, 1472); got != 100 {
		t.Errorf("PadNone: %d, want 100", got)
	}
}

// TestConformCutShort: cutShort on sealed datagrams made directly: cut
// anywhere inside the padding or inside the payload of a padded datagram
// it says cut; the intact datagram with a flipped bit, random bytes under
// the session's index, and a cut within the last 16 bytes it does not. On
// the failure path it allocates nothing.
func TestConformCutShort(t *testing.T) {
	a, b, _ := sessPair(t)
	rec := &record{payload: bytes.Repeat([]byte{0x5a}, 300), hasPayload: true}
	env := rec.appendTo(nil, 1452-sealedOverhead)
	dg := sessSeal(t, a, env)
	if len(dg) != 1452 {
		t.Fatalf("sealed %d bytes, want 1452", len(dg))
	}
	try := func(d []byte) bool {
		d = bytes.Clone(d)
		var head [16]byte
		copy(head[:], d[sealedHeaderLen:])
		if _, err := b.open(d); err == nil {
			t.Fatalf("a %d-byte datagram opened", len(d))
		}
		return b.cutShort(d, &head)
	}
	natural := sealedOverhead + 4 + 2 + 3 + 300 // 341: v, then p's key, bin16 header, payload
	for n := sealedOverhead + 8; n <= len(dg)-tagLen; n++ {
		got := try(dg[:n])
		// Cut inside the payload: the header says more. Cut in the
		// padding with 16 bytes of zeros before the cut: the keystream.
		inPayload := n < natural
		inZeros := n-tagLen >= natural+5 // past the "g" entry's header (bin16 here)
		if (inPayload || inZeros) && !got {
			t.Errorf("cut to %d bytes: not recognised", n)
		}
	}
	for _, n := range []int{len(dg) - 1, len(dg) - 8, len(dg) - 15} {
		if try(dg[:n]) {
			t.Errorf("cut to %d bytes (inside the tag): said cut", n)
		}
	}
	flipped := bytes.Clone(dg)
	flipped[len(flipped)-1] ^= 1
	if try(flipped) {
		t.Error("a flipped tag bit: said cut")
	}
	random := make([]byte, 1452)
	for i := range 200 {
		rand.Read(random)
		copy(random, dg[:sealedHeaderLen])
		binary.BigEndian.PutUint64(random[8:], uint64(i))
		if try(random) {
			t.Errorf("random bytes %d: said cut", i)
		}
	}
	if raceEnabled {
		return
	}
	cut := bytes.Clone(dg[:1300])
	var head [16]byte
	copy(head[:], cut[sealedHeaderLen:])
	b.open(cut)
	if n := testing.AllocsPerRun(100, func() { b.cutShort(cut, &head) }); n != 0 {
		t.Errorf("cutShort: %v allocations", n)
	}
}
