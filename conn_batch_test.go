package vaultudp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"
)

// WriteBatch and ReadBatch carry every datagram intact, in order, for
// every padding mode (equal lengths on the wire make GSO trains; unequal
// ones break them), including datagrams that wait for the handshake.
func TestWriteBatchReadBatch(t *testing.T) {
	parallel(t)
	for _, pad := range []Padding{PadMTU, PadNone, PadBlock(100)} {
		t.Run(pad.String(), func(t *testing.T) {
			cfg := func() *Config { return &Config{Padding: pad, ReadQueue: 4096} }
			a, b := pair(t, "udp4", "127.0.0.1", cfg(), cfg())
			to := addrOf(b)
			const total = 2000
			sizes := func(i int) int { return []int{8, 100, 700, a.MaxPayload()}[i%4] }
			msgs := make([]Message, 0, 100)
			want := 0
			for i := 0; i < total; {
				msgs = msgs[:0]
				for k := 0; k < 30 && i < total; k, i = k+1, i+1 {
					buf := make([]byte, sizes(i))
					binary.BigEndian.PutUint32(buf, uint32(i))
					msgs = append(msgs, Message{Buf: buf, Addr: to})
				}
				n, err := a.WriteBatch(msgs)
				if err != nil || n != len(msgs) {
					t.Fatalf("WriteBatch = %d, %v", n, err)
				}
				// Read what was written before writing more: loopback
				// keeps order, and the receiver's queue never overflows.
				in := make([]Message, 64)
				for k := range in {
					in[k].Buf = make([]byte, 2048)
				}
				for want < i {
					b.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, err := b.ReadBatch(in)
					if err != nil {
						t.Fatalf("ReadBatch after %d: %v (a %+v b %+v)", want, err, a.Stats(), b.Stats())
					}
					for _, m := range in[:n] {
						if m.N != sizes(want) || binary.BigEndian.Uint32(m.Buf) != uint32(want) || m.Addr != addrOf(a) {
							t.Fatalf("datagram %d: %d bytes, seq %d, from %v", want, m.N, binary.BigEndian.Uint32(m.Buf), m.Addr)
						}
						if !bytes.Equal(m.Buf[4:m.N], make([]byte, m.N-4)) {
							t.Fatalf("datagram %d changed", want)
						}
						want++
					}
				}
			}
			if s := b.Stats(); s.DatagramsIn != total || a.Stats().DatagramsOut != total {
				t.Fatalf("in %d, out %d, want %d", s.DatagramsIn, a.Stats().DatagramsOut, total)
			}
		})
	}
}

// A datagram larger than the peer receives stops the batch there: those
// before it are sent, it and those after are not, and the error says why.
func TestWriteBatchTooLarge(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	to := addrOf(b)
	ms := []Message{{Buf: []byte("one"), Addr: to}, {Buf: []byte("two"), Addr: to},
		{Buf: make([]byte, maxPayloadFor(udpMaxDatagram)+1), Addr: to}, {Buf: []byte("four"), Addr: to}}
	n, err := a.WriteBatch(ms)
	if n != 2 || !isTooLarge(err) {
		t.Fatalf("WriteBatch = %d, %v; want 2 and ErrMessageTooLarge", n, err)
	}
	for _, w := range []string{"one", "two"} {
		expectRead(t, b, w, addrOf(a))
	}
	expectNothing(t, b, 100*time.Millisecond)
}

// WriteBatch sends what WriteTo sends: a datagram above MaxPayload but
// within MaxPayloadTo goes either way, and each is counted, in Stats and
// in the peer's PeerInfo, as WriteTo counts it.
func TestWriteBatchSameRulesAsWriteTo(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	to := addrOf(b)
	size := a.MaxPayload() + 50
	if max := a.MaxPayloadTo(to); size > max {
		t.Fatalf("MaxPayloadTo %d below MaxPayload %d + 50", max, a.MaxPayload())
	}
	if _, err := a.WriteToUDPAddrPort(make([]byte, size), to); err != nil {
		t.Fatalf("WriteTo of %d bytes: %v", size, err)
	}
	if n, err := a.WriteBatch([]Message{{Buf: make([]byte, size), Addr: to}, {Buf: []byte("x"), Addr: to}}); n != 2 || err != nil {
		t.Fatalf("WriteBatch of %d bytes = %d, %v; WriteTo sent it", size, n, err)
	}
	for range 3 {
		readWithin(t, b, waitLong)
	}
	want := uint64(2*size + 1)
	if s := a.Stats(); s.DatagramsOut != 3 || s.BytesOut != want {
		t.Fatalf("Stats: %d datagrams, %d bytes out; want 3, %d", s.DatagramsOut, s.BytesOut, want)
	}
	for _, pi := range a.Peers() {
		if pi.Addr == to && (pi.DatagramsOut != 3 || pi.BytesOut != want) {
			t.Fatalf("PeerInfo: %d datagrams, %d bytes out; want 3, %d", pi.DatagramsOut, pi.BytesOut, want)
		}
	}
}

// WriteBatch does not overtake datagrams a streaming WriteTo left in the
// send queue: the peer receives everything in the order it was written.
func TestWriteBatchAfterQueuedWrites(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	streaming(t, a)
	release := make(chan struct{})
	setBeforeSend(a, func() error { <-release; return nil }) // the WriteTo trains wait
	to := addrOf(b)
	msg := func(i int) []byte { m := make([]byte, 100); binary.BigEndian.PutUint32(m, uint32(i)); return m }
	for i := range 5 {
		if _, err := a.WriteToUDPAddrPort(msg(i), to); err != nil {
			t.Fatal(err)
		}
	}
	// WriteBatch queues behind them (it does not wait: the queue has
	// room), and none of its datagrams leaves before the five.
	if _, err := a.WriteBatch([]Message{{Buf: msg(100), Addr: to}, {Buf: msg(101), Addr: to}, {Buf: msg(102), Addr: to}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	var got []int
	for range 8 {
		d, _ := readWithin(t, b, waitLong)
		got = append(got, int(binary.BigEndian.Uint32(d)))
	}
	if want := []int{0, 1, 2, 3, 4, 100, 101, 102}; !slices.Equal(got, want) {
		t.Fatalf("received %v, want %v", got, want)
	}
}

// Steady-state batch I/O allocates nothing per datagram.
func TestBatchZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race; CI runs the Alloc tests without it")
	}
	a, b := pair(t, "udp4", "127.0.0.1", nil, &Config{ReadQueue: 4096})
	handshakeT(t, a, addrOf(b))
	out := make([]Message, 16)
	in := make([]Message, 16)
	for k := range out {
		out[k] = Message{Buf: make([]byte, 1200), Addr: addrOf(b)}
		in[k].Buf = make([]byte, 2048)
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := a.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := b.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per batch of %d, want 0", allocs, len(out))
	}
}

func isTooLarge(err error) bool {
	return errors.Is(err, ErrMessageTooLarge) && errors.Is(err, syscall.EMSGSIZE)
}

// Steady-state ReadFromUDPAddrPort/WriteToUDPAddrPort allocate nothing,
// and ReadFrom/WriteTo no more than *net.UDPConn's (the fresh
// *net.UDPAddr of each ReadFrom).
func TestDatagramAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race; CI runs the Alloc tests without it")
	}
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	to := addrOf(b)
	msg, buf := make([]byte, 1200), make([]byte, 2048)
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	roundTrip := func() {
		if _, err := a.WriteToUDPAddrPort(msg, to); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm the packet free list
		roundTrip()
	}
	if allocs := testing.AllocsPerRun(200, roundTrip); allocs > 0 {
		t.Errorf("WriteToUDPAddrPort+ReadFromUDPAddrPort: %.2f allocations per datagram, want 0", allocs)
	}

	rawA, rawB := rawUDP(t), rawUDP(t)
	rawTo := rawB.LocalAddr()
	rawAllocs := testing.AllocsPerRun(200, func() {
		rawA.WriteTo(msg, rawTo)
		rawB.ReadFrom(buf)
	})
	toAddr := b.LocalAddr()
	ours := testing.AllocsPerRun(200, func() {
		if _, err := a.WriteTo(msg, toAddr); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.ReadFrom(buf); err != nil {
			t.Fatal(err)
		}
	})
	if ours > rawAllocs {
		t.Errorf("WriteTo+ReadFrom: %.2f allocations per datagram, *net.UDPConn: %.2f", ours, rawAllocs)
	}
}
