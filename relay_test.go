package vaultudp

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// relay is a plain UDP relay between two Conns, the network an attacker
// on the path controls: a talks to the relay's address, which forwards to
// b, and b's answers (to the relay, its source) go back to a. It records
// every datagram it forwards, and a test may have it tamper with the next
// one from a to b.
type relay struct {
	pc   *net.UDPConn
	a, b netip.AddrPort
	done chan struct{}

	mu       sync.Mutex
	seen     [][]byte                // every datagram forwarded, both ways
	tamper   func(b []byte) [][]byte // applied to the next sealed datagram from a; nil: none
	tampered chan struct{}           // closed when tamper has run
	// rewrite, if set, replaces every datagram (toB: from a to b) with
	// what it returns, after it is recorded.
	rewrite func(p []byte, toB bool) [][]byte
}

// setRewrite sets the relay's rewrite (see relay.rewrite).
func (r *relay) setRewrite(f func(p []byte, toB bool) [][]byte) {
	r.mu.Lock()
	r.rewrite = f
	r.mu.Unlock()
}

func newRelay(t *testing.T, a, b netip.AddrPort) *relay {
	r := &relay{pc: rawUDP(t), a: a, b: b, done: make(chan struct{})}
	go r.run()
	t.Cleanup(func() {
		r.pc.Close()
		<-r.done
	})
	return r
}

func (r *relay) addr() netip.AddrPort { return r.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *relay) run() {
	defer close(r.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		p := bytes.Clone(buf[:n])
		var to netip.AddrPort
		switch normAddr(from) {
		case r.a:
			to = r.b
		case r.b:
			to = r.a
		default:
			continue
		}
		out := [][]byte{p}
		r.mu.Lock()
		r.seen = append(r.seen, p)
		if to == r.b && r.tamper != nil && len(p) > 1 && p[1] == typeSealed {
			out = r.tamper(p)
			r.tamper = nil
			close(r.tampered)
		}
		if r.rewrite != nil {
			out = r.rewrite(p, to == r.b)
		}
		r.mu.Unlock()
		for _, d := range out {
			r.pc.WriteToUDPAddrPort(d, to)
		}
	}
}

// tamperNext arranges for f to replace the next sealed datagram from a to
// b; the returned channel is closed once it has.
func (r *relay) tamperNext(f func([]byte) [][]byte) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tamper = f
	r.tampered = make(chan struct{})
	return r.tampered
}

// injectToB sends d to b from the relay's address.
func (r *relay) injectToB(t *testing.T, d []byte) {
	t.Helper()
	if _, err := r.pc.WriteToUDPAddrPort(d, r.b); err != nil {
		t.Fatal(err)
	}
}

func (r *relay) datagrams() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.seen...)
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLong):
		t.Fatalf("%s did not happen", what)
	}
}

func TestRelay(t *testing.T) {
	parallel(t)
	for _, pad := range []Padding{PadMTU, PadNone, PadBlock(64)} {
		t.Run(pad.String(), func(t *testing.T) {
			cfg := &Config{MTU: 1500, Padding: pad}
			a, b := pair(t, "udp4", "127.0.0.1", cfg, cfg)
			r := newRelay(t, addrOf(a), addrOf(b))
			ra := r.addr() // a's peer, and b's: the relay is all either sees
			send := func(m string) {
				t.Helper()
				if _, err := a.WriteToUDPAddrPort([]byte(m), ra); err != nil {
					t.Fatal(err)
				}
			}

			// Traffic both ways, with a 32-byte marker repeated.
			marker := []byte("vaultudp-relay-marker-0123456789")
			var msgs [][]byte
			for _, n := range []int{1, 2, 5, 20, a.MaxPayload() / 32} {
				msgs = append(msgs, bytes.Repeat(marker, n))
			}
			// The marker amid random bytes, which compression cannot hide.
			noise := make([]byte, 600)
			rand.Read(noise)
			msgs = append(msgs, append(append(append([]byte(nil), noise[:300]...), marker...), noise[300:]...))
			for _, m := range msgs {
				if _, err := a.WriteToUDPAddrPort(m, ra); err != nil {
					t.Fatal(err)
				}
				got, from := readWithin(t, b, waitLong)
				if !bytes.Equal(got, m) || from != ra {
					t.Fatalf("b got %d bytes from %v, want %d from the relay %v", len(got), from, len(m), ra)
				}
				if _, err := b.WriteToUDPAddrPort(m, ra); err != nil {
					t.Fatal(err)
				}
				got, from = readWithin(t, a, waitLong)
				if !bytes.Equal(got, m) || from != ra {
					t.Fatalf("a got %d bytes from %v", len(got), from)
				}
			}
			seen := r.datagrams()
			sealedLens := map[int]bool{}
			for _, d := range seen {
				for _, probe := range [][]byte{marker, marker[:16], marker[16:], marker[8:24]} {
					if bytes.Contains(d, probe) {
						t.Fatalf("a relayed datagram of %d bytes contains %q", len(d), probe)
					}
				}
				if len(d) > 1 && d[1] == typeSealed {
					sealedLens[len(d)] = true
				}
			}
			if pad == PadMTU && len(sealedLens) != 1 {
				t.Errorf("padding to the MTU, sealed datagrams have %d lengths: %v", len(sealedLens), sealedLens)
			}
			t.Logf("%d datagrams relayed, sealed lengths %v", len(seen), sealedLens)

			// A datagram played twice is delivered once.
			before := b.Stats()
			waitTwice := r.tamperNext(func(d []byte) [][]byte { return [][]byte{d, d} })
			send("played twice")
			waitClosed(t, waitTwice, "the replay")
			send("after the replay")
			expectRead(t, b, "played twice", ra)
			expectRead(t, b, "after the replay", ra) // and not the copy, which came before it
			after := b.Stats()
			if after.Drops.Replay != before.Drops.Replay+1 || after.DatagramsIn != before.DatagramsIn+2 {
				t.Errorf("replay: Drops.Replay %d -> %d, DatagramsIn %d -> %d; want +1, +2",
					before.Drops.Replay, after.Drops.Replay, before.DatagramsIn, after.DatagramsIn)
			}

			// A flipped bit, anywhere after the session index, is never
			// delivered: the counter (the nonce), the ciphertext, the tag.
			for _, pos := range []int{8, 11, 15, 16, 17, 40, -17, -16, -1} {
				for _, bit := range []byte{0x01, 0x80} {
					before := b.Stats()
					flipped := r.tamperNext(func(d []byte) [][]byte {
						i := pos
						if i < 0 {
							i += len(d)
						}
						d = bytes.Clone(d)
						d[i] ^= bit
						return [][]byte{d}
					})
					m := fmt.Sprintf("flip %d/%#x", pos, bit)
					send(m)
					waitClosed(t, flipped, "the bit flip")
					send("after " + m)
					expectRead(t, b, "after "+m, ra)
					after := b.Stats()
					if after.Drops.Auth != before.Drops.Auth+1 || after.DatagramsIn != before.DatagramsIn+1 {
						t.Errorf("%s: Drops.Auth %d -> %d, DatagramsIn %d -> %d; want +1, +1",
							m, before.Drops.Auth, after.Drops.Auth, before.DatagramsIn, after.DatagramsIn)
					}
				}
			}

			// Garbage sent to b's port is dropped and counted, and traffic
			// goes on. From the relay's address (ordered with the traffic,
			// so the counts are exact when the next datagram arrives) ...
			garbage := [][]byte{
				{},
				{ProtocolVersion},
				{0xff, 0xff, 0xff, 0xff},
				{ProtocolVersion, 9, 0, 0},        // unknown type
				{ProtocolVersion, typeOpen, 0xc1}, // not msgpack
				{ProtocolVersion, typeOpen, 0x81, 0xa1, 'c', 0xc4, 1, 99},              // unknown control message
				append([]byte{ProtocolVersion, typeSealed, 0, 0}, make([]byte, 10)...), // too short to be sealed
				append([]byte{ProtocolVersion, typeSealed, 1, 0}, make([]byte, 60)...), // reserved bytes set
				bytes.Repeat([]byte{0x55}, 1000),
			}
			before = b.Stats()
			for i, g := range garbage {
				r.injectToB(t, g)
				send(fmt.Sprintf("traffic %d", i))
				expectRead(t, b, fmt.Sprintf("traffic %d", i), ra)
			}
			after = b.Stats()
			if got := after.Drops.Malformed - before.Drops.Malformed; got != uint64(len(garbage)) {
				t.Errorf("Drops.Malformed +%d for %d garbage datagrams", got, len(garbage))
			}
			// ... and from a stranger's.
			raw := rawUDP(t)
			before = b.Stats()
			for _, g := range garbage {
				raw.WriteToUDPAddrPort(g, addrOf(b))
			}
			strangerBarrier(t, raw, addrOf(b))
			send("traffic after the stranger")
			expectRead(t, b, "traffic after the stranger", ra)
			after = b.Stats()
			if got := after.Drops.Malformed - before.Drops.Malformed; got != uint64(len(garbage)) {
				t.Errorf("Drops.Malformed +%d for %d garbage datagrams from a stranger", got, len(garbage))
			}
			expectNothing(t, b, 20*time.Millisecond)
		})
	}
}
