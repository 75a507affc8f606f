package vaultudp

import (
	"context"
	"encoding/binary"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// forgedHello is a valid hello of a fresh identity with sender index idx,
// or nil if one cannot be made (on a goroutine that is not the test's).
func forgedHello(idx uint32) []byte {
	st, err := noise.NewStatic(GenerateIdentity(), nil)
	if err != nil {
		return nil
	}
	init, err := noise.NewInitiation(noise.InitiatorConfig{Static: st, Index: idx})
	if err != nil {
		return nil
	}
	return init.Hello()
}

// TestReview7RacedSameIndexHello: an on-path attacker who sees a client's
// hello and gets a hello of its own, with the client's sender index and
// forged as from the client's address, to the server first (a relay
// stands for the path: what it sends, the server sees from the client's
// address). Since 64f04e2 the server takes the client's real hello for
// "answered already" (answeredLocked compares only the sender index)
// and drops it: the client gets only the reply to the forged hello,
// which does not decrypt, and waits for its retry. Before, both were
// answered (the server keeps two replies) and the client completed at
// its first hello. Both clocks are the test's: no retry goes unless the
// test moves the client's.
func TestReview7RacedSameIndexHello(t *testing.T) {
	parallel(t)
	clkS, clkC := newFakeClock(), newFakeClock()
	s := fakeListen(t, clkS, nil)
	c := fakeListen(t, clkC, nil)
	r := newRelay(t, addrOf(c), addrOf(s))
	var hellos atomic.Int32
	r.setRewrite(func(p []byte, toB bool) [][]byte {
		if toB && len(p) > 8 && p[1] == typeHello && hellos.Add(1) == 1 {
			if f := forgedHello(binary.BigEndian.Uint32(p[4:8])); f != nil {
				return [][]byte{f, p} // the forged one first, then the client's
			}
		}
		return [][]byte{p}
	})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		done <- c.Handshake(ctx, r.addr())
	}()
	if took, ok := waitFor(waitLong, func() bool {
		st := s.Stats()
		return st.Verifications+st.Drops.Stale >= 2
	}); !ok {
		t.Fatalf("the two hellos not handled after %v: server %+v", took, s.Stats())
	}
	if st := s.Stats(); st.Verifications != 2 {
		t.Fatalf("finding 1: the server answered %d of the 2 hellos with the client's sender index (%d dropped as stale): "+
			"a forged hello that came first with the client's index made the client's own hello 'answered already' (answeredLocked compares the index only)",
			st.Verifications, st.Drops.Stale)
	}
	// No retry: the client completes with the reply to its first hello.
	if err := <-done; err != nil {
		t.Fatalf("handshake: %v (server %+v, client %+v)", err, s.Stats(), c.Stats())
	}
	if n := hellos.Load(); n != 1 {
		t.Errorf("%d hellos from the client, want 1", n)
	}
}

// TestReview7PushOutByFreshHellos: the same attacker, or an off-path one
// that forges hellos from the client's address at a few tens a second
// (under the cookie threshold, so no cookie stops them), needs no race
// and no sender index: two hellos with fresh indexes that reach the
// server after the client's, and before its final message, push the
// client's reply out (the server keeps two per source), the final message
// finds nothing, and the attempt fails. This is older than the reviewed
// commits (they neither cause nor fix it); it bounds what finding 1 adds.
// Skipped unless REVIEW7_PREEXISTING is set: it fails.
func TestReview7PushOutByFreshHellos(t *testing.T) {
	if os.Getenv("REVIEW7_PREEXISTING") == "" {
		t.Skip("finding 2 (pre-existing): two forged hellos with fresh sender indexes from a client's address, after its hello, push out its reply and fail its attempt; set REVIEW7_PREEXISTING=1 to run")
	}
	parallel(t)
	clkS, clkC := newFakeClock(), newFakeClock()
	s := fakeListen(t, clkS, nil)
	c := fakeListen(t, clkC, nil)
	r := newRelay(t, addrOf(c), addrOf(s))
	var hellos, finals atomic.Int32
	r.setRewrite(func(p []byte, toB bool) [][]byte {
		if toB && len(p) > 8 && p[1] == typeFinal {
			finals.Add(1)
		}
		if toB && len(p) > 8 && p[1] == typeHello && hellos.Add(1) == 1 {
			f1, f2 := forgedHello(0x1111), forgedHello(0x2222)
			if f1 != nil && f2 != nil {
				return [][]byte{p, f1, f2} // the client's, then two forged ones
			}
		}
		return [][]byte{p}
	})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		done <- c.Handshake(ctx, r.addr())
	}()
	if took, ok := waitFor(waitLong, func() bool { return finals.Load() >= 1 && s.Stats().Verifications >= 3 }); !ok {
		t.Fatalf("no final message after %v: server %+v", took, s.Stats())
	}
	// The client resends its final message every second; give the
	// attempt its whole handshake timeout.
	for range 6 {
		clkS.advance(t, time.Second, 100*time.Millisecond)
		clkC.advance(t, time.Second, 100*time.Millisecond)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("finding 2: handshake: %v after %d final messages (server: %d handshakes, %d stale)",
				err, finals.Load(), s.Stats().Handshakes, s.Stats().Drops.Stale)
		}
	case <-time.After(waitLong):
		t.Fatal("Handshake did not return")
	}
}
