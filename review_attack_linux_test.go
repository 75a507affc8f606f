//go:build linux

package vaultudp

import (
	"net/netip"
	"testing"
	"time"
)

// Independent review of the issue 21 changes (review branch). Each test
// performs an attack through real sockets on loopback and fails on main
// (126ad41) where it found a hole; it prints its figure either way.

// reviewOpen is an open (plaintext) datagram carrying payload.
func reviewOpen(b []byte) []byte {
	return (&record{payload: b, hasPayload: true}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
}

// reviewHandled is what c has done with the plaintext it received:
// delivered or dropped at the full read queue.
func reviewHandled(c *Conn) uint64 {
	s := c.Stats()
	return s.DatagramsIn + s.Drops.QueueFull
}

// TestReviewEvictedSetOverwritten (finding 1): the fix of issue 21 item 4
// remembers evicted plaintext-only addresses in addrSet, a fixed table of
// 4,096 keyed hashes where a later address takes an earlier one's slot.
// So the attacker of item 4 only has to evict more: after ~20,000 forged
// plaintext sources, almost every victim's slot is taken by a filler,
// the victims are forgotten, and the application's answer makes them
// write-origin peers again, which get a hello and its retries. The
// figure is the victims' amplification, as in item 4 (x70 before).
func TestReviewEvictedSetOverwritten(t *testing.T) {
	sp := newSpoofer(t)
	cfg := &Config{Policy: Opportunistic, HandshakeTimeout: 500 * time.Millisecond}
	srv := listenT(t, "udp4", "127.0.0.1:0", cfg)
	msg := reviewOpen([]byte("twelve bytes"))
	var victims []*victim
	for range 4 {
		v := newVictim(t)
		victims = append(victims, v)
		sp.send(t, v.addr(), addrOf(srv), msg)
	}
	// Fillers, paced so that the socket drops none: each evicts one
	// plaintext peer into the 4,096-slot set once the table is full.
	const fillers = 24000
	const batch = 400
	sent := uint64(len(victims))
	stop := make(chan struct{})
	drained := make(chan struct{})
	go func() { // the application reads everything
		defer close(drained)
		buf := make([]byte, 64)
		for {
			select {
			case <-stop:
				return
			default:
			}
			srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			srv.ReadFromUDPAddrPort(buf)
		}
	}()
	for i := 0; i < fillers; i += batch {
		for j := i; j < i+batch; j++ {
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(j >> 8), byte(j)}), uint16(20000+j%1000))
			sp.send(t, from, addrOf(srv), msg)
		}
		sent += batch
		waitFor(2*time.Second, func() bool { return reviewHandled(srv) >= sent })
	}
	close(stop)
	<-drained
	srv.SetReadDeadline(time.Time{})
	srv.mu.RLock()
	remembered := 0
	for _, v := range victims {
		if srv.plainEvicted.has(v.addr()) {
			remembered++
		}
	}
	srv.mu.RUnlock()
	for _, v := range victims {
		if _, err := srv.WriteToUDPAddrPort([]byte("the answer"), v.addr()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * cfg.HandshakeTimeout / 2) // a hello and its retries (100 ms apart)
	bad := 0
	for i, v := range victims {
		n, bytes := v.received()
		t.Logf("victim %d: sent %d bytes, got %d datagrams, %d bytes (x%.1f)", i, len(msg), n, bytes, factor(bytes, len(msg)))
		if n != 1 {
			bad++
		}
	}
	t.Logf("%d forged plaintext sources handled of %d; victims still remembered as evicted: %d of %d", reviewHandled(srv), sent, remembered, len(victims))
	if bad > 0 {
		t.Errorf("%d of %d evicted victims got hellos besides the answer: the evicted-address set forgets them once enough fillers pass", bad, len(victims))
	}
}
