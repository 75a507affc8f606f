package vaultudp

import (
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
)

// testClock is a wall clock for Config's clock that moves only when told.
type testClock struct{ ns atomic.Int64 }

func newTestClock(t time.Time) *testClock {
	c := &testClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *testClock) now() time.Time { return time.Unix(0, c.ns.Load()) }

func (c *testClock) set(t time.Time) { c.ns.Store(t.UnixNano()) }

// sealedAt is a sealed datagram of payload to c stamped ts.
func (r *fakeRef) sealedAt(c *Conn, payload string, ts time.Time) []byte {
	var bn [24]byte
	var in [16]byte
	rand.Read(bn[:])
	rand.Read(in[:])
	return v2.Seal(nil, r.shared(c), &bn, &in, v2.UnixSeconds(ts), v2.AppendFrame(nil, r.z.compress(nil, []byte(payload)), nil, nil))
}

// TestV2ReplayFloor: a sealed datagram captured from a v2 peer is not
// delivered again after RemovePeer and AddPeer, nor by a new Conn with
// the same keys, although it is still inside the 60 s window: a v2 peer's
// replay floor starts 30 s before it was added. A datagram stamped in the
// 30 s before the add (a Go peer's stamp of a datagram sent after it) is
// accepted.
func TestV2ReplayFloor(t *testing.T) {
	parallel(t)
	t0 := time.Now().Add(-time.Minute)
	clk := newTestClock(t0)
	id := GenerateIdentity()
	r := newFakeRef(t)
	c := v2Conn(t, &Config{Identity: id, now: clk.now}, PeerConfig{Addr: r.addr()})
	keyed(t, c, r)
	captured := r.sealedAt(c, "captured", t0.Add(time.Second))
	clk.set(t0.Add(2 * time.Second))
	r.send(r.snd, c, captured)
	expectRead(t, c, "captured", r.addr())

	// 40 s later the datagram is 39 s old: inside the window.
	clk.set(t0.Add(40 * time.Second))
	if err := c.RemovePeer(r.addr()); err != nil {
		t.Fatal(err)
	}
	if err := c.AddPeer(PeerConfig{Addr: r.addr(), Protocol: ProtocolV2}); err != nil {
		t.Fatal(err)
	}
	keyed(t, c, r)
	r.send(r.snd, c, captured)
	// Stamped 29 s before the add: a Go peer's stamp (30 s in the past) of
	// a datagram sent after it.
	r.send(r.snd, c, r.sealedAt(c, "backdated", t0.Add(11*time.Second)))
	expectRead(t, c, "backdated", r.addr())
	if st := c.Stats(); st.Drops.Replay != 1 || st.DatagramsIn != 2 {
		t.Fatalf("after re-adding the peer: stats %+v, want the captured datagram refused as a replay", st)
	}

	// A new Conn with the same keys.
	c.Close()
	c = v2Conn(t, &Config{Identity: id, now: clk.now}, PeerConfig{Addr: r.addr()})
	keyed(t, c, r)
	r.send(r.snd, c, captured)
	r.send(r.snd, c, r.sealedAt(c, "fresh", t0.Add(40*time.Second)))
	expectRead(t, c, "fresh", r.addr())
	if st := c.Stats(); st.Drops.Replay != 1 || st.DatagramsIn != 1 {
		t.Fatalf("after a restart: stats %+v, want the captured datagram refused as a replay", st)
	}
}
