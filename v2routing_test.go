package vaultudp

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
)

// sealedWithNonce is a sealed datagram of payload to c whose box nonce
// (its first 24 bytes) starts with prefix.
func (r *fakeRef) sealedWithNonce(c *Conn, payload string, prefix []byte) []byte {
	var bn [24]byte
	var in [16]byte
	rand.Read(bn[:])
	rand.Read(in[:])
	copy(bn[:], prefix)
	return v2.Seal(nil, r.shared(c), &bn, &in, v2.UnixSeconds(time.Now()), v2.AppendFrame(nil, r.z.compress(nil, []byte(payload)), nil, nil))
}

// TestV2RoutingNativeFirst: datagrams are native first; a v2 peer's
// sealed datagram whose random box nonce happens to start like a native
// datagram (version, type, even the index of a live session) is refused
// by the native checks before anything is authenticated and then read as
// v2. Garbage that is neither is counted once, under the native reason.
// A native peer on the v2 peer's IP is unaffected, and a native hello
// from the v2 peer's own address makes no session.
func TestV2RoutingNativeFirst(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	keyed(t, c, r)
	strangerSession(t, c) // a native session from a stranger on the same IP
	var live uint32
	for _, idx := range indexedSessions(c) {
		live = idx
	}
	if live == 0 {
		t.Fatal("no native session")
	}
	liveHdr := []byte{ProtocolVersion, typeSealed, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(liveHdr[4:], live)
	resets := c.Stats().ResetsSent
	for name, prefix := range map[string][]byte{
		"sealed header, unknown index": {ProtocolVersion, typeSealed, 0, 0},
		"open header":                  {ProtocolVersion, typeOpen},
		"reset header":                 {ProtocolVersion, typeReset, 0, 0},
		"open header and a map":        {ProtocolVersion, typeOpen, 0x81, 0xa1, 'v', envelopeVersion},
	} {
		d := r.sealedWithNonce(c, name, prefix)
		r.send(r.snd, c, d)
		expectRead(t, c, name, r.addr())
	}
	if st := c.Stats(); st.ResetsSent != resets {
		t.Fatalf("%d resets sent for v2 datagrams that look native", st.ResetsSent-resets)
	}
	// The one form that is lost: the header and index of a live native
	// session (a chance of about 2^-64 per session), refused by its tag.
	before := c.Stats().Drops
	r.send(r.snd, c, r.sealedWithNonce(c, "lost", liveHdr))
	r.send(r.snd, c, r.sealed(c, "next", nil))
	expectRead(t, c, "next", r.addr())
	if after := c.Stats().Drops; after.Auth != before.Auth+1 {
		t.Fatalf("a v2 datagram with a live native session's header: drops %+v, then %+v, want one Auth", before, after)
	}
	before = c.Stats().Drops
	garbage := make([]byte, 100)
	rand.Read(garbage)
	copy(garbage, []byte{ProtocolVersion, typeSealed, 0, 0, 0xff, 0xff, 0xff, 0xff})
	r.send(r.snd, c, garbage)
	r.send(r.snd, c, r.sealed(c, "after", nil))
	expectRead(t, c, "after", r.addr())
	after := c.Stats().Drops
	if after.UnknownSession != before.UnknownSession+1 || after.Malformed != before.Malformed || after.Auth != before.Auth {
		t.Fatalf("garbage with a native header from a v2 IP: drops %+v, then %+v, want one UnknownSession", before, after)
	}

	native := listenT(t, "udp4", "127.0.0.1:0", nil)
	if _, err := native.WriteToUDPAddrPort([]byte("native"), addrOf(c)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "native", addrOf(native))

	handshakes := c.Stats().Handshakes
	r.send(r.lis, c, helloDatagram(t))
	r.send(r.snd, c, r.sealed(c, "still v2", nil))
	expectRead(t, c, "still v2", r.addr())
	barrier(t, c)
	if st := c.Stats(); st.Handshakes != handshakes { // v4: a hello alone completes none, the barrier's neither
		t.Fatalf("a native hello from the v2 peer's address: %d handshakes, want %d", st.Handshakes, handshakes)
	}
	if pi := peerInfo(t, c, r.addr()); pi.Protocol != ProtocolV2 {
		t.Fatalf("peer %+v", pi)
	}
}

// TestV2PeerInfoCounters: PeerInfo counts a v2 peer's traffic both ways.
func TestV2PeerInfoCounters(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	keyed(t, c, r)
	r.send(r.snd, c, r.sealed(c, "in", nil))
	expectRead(t, c, "in", r.addr())
	if _, err := c.WriteToUDPAddrPort([]byte("out!"), r.addr()); err != nil {
		t.Fatal(err)
	}
	if got := r.readSealed(c); string(got) != "out!" {
		t.Fatalf("read %q", got)
	}
	pi := peerInfo(t, c, r.addr())
	if pi.DatagramsIn != 1 || pi.BytesIn != 2 || pi.DatagramsOut != 1 || pi.BytesOut != 4 {
		t.Fatalf("peer info %+v, want 1 datagram of 2 bytes in, 1 of 4 out", pi)
	}
}

// TestV2WriteQueue: datagrams written to a v2 peer before its box key is
// known wait in the Conn's write queue, under its bounds (a full queue
// counts WriteQueueFull and the write succeeds, as for a native peer), and
// go out in order once the key is known.
func TestV2WriteQueue(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	size := c.MaxPayload()
	fit := maxQueuedBytesPerPeer / size
	for i := range fit + 3 {
		b := []byte(strings.Repeat(string(rune('a'+i%26)), size))
		if _, err := c.WriteToUDPAddrPort(b, r.addr()); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if st := c.Stats(); st.Drops.WriteQueueFull != 3 || st.DatagramsOut != 0 {
		t.Fatalf("stats %+v, want 3 writes over the queue's bound", st)
	}
	if q := c.queuedBytes.Load(); q != int64(fit*size) {
		t.Fatalf("%d bytes in the Conn's write queue, want %d", q, fit*size)
	}
	keyed(t, c, r)
	if got := r.readSealed(c); string(got) != strings.Repeat("a", size) {
		t.Fatalf("first datagram %q..., want the first written", got[:min(len(got), 8)])
	}
	barrier(t, c)
	if st := c.Stats(); st.DatagramsOut+st.Drops.V2SendLimit != uint64(fit) || c.queuedBytes.Load() != 0 {
		t.Fatalf("stats %+v, queued %d bytes: want the %d waiting datagrams sent or rate-limited", st, c.queuedBytes.Load(), fit)
	}
}

// TestV2SmallMTU: on the smallest MTU, where MaxPayload is below a zstd
// window, v2 payloads (always compressed) are still read and written.
func TestV2SmallMTU(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, &Config{MTU: MinMTU}, PeerConfig{Addr: r.addr()})
	if c.MaxPayload() >= 1024 {
		t.Fatalf("MaxPayload %d at MTU %d", c.MaxPayload(), MinMTU)
	}
	keyed(t, c, r)
	small := strings.Repeat("s", c.MaxPayload())
	r.send(r.snd, c, r.sealed(c, small, nil))
	expectRead(t, c, small, r.addr())
	if _, err := c.WriteToUDPAddrPort([]byte("reply"), r.addr()); err != nil {
		t.Fatal(err)
	}
	if got := r.readSealed(c); string(got) != "reply" {
		t.Fatalf("read %q", got)
	}
}
