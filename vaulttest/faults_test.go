package vaulttest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/bits"
	"net"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"
)

// faultyPipe returns a FaultyConn with faults f writing through an endpoint
// at 127.0.0.1:1, and an endpoint at 127.0.0.1:2 with a receive queue large
// enough for any test.
func faultyPipe(t *testing.T, f Faults) (*FaultyConn, *PacketConn) {
	t.Helper()
	n := &Network{QueueLen: 100000}
	a, err := n.Listen(netip.MustParseAddrPort("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	fa := NewFaultyConn(a, f)
	t.Cleanup(func() { fa.Close() })
	return fa, mustListen(t, n, "127.0.0.1:2")
}

// drain reads every datagram waiting in c's receive queue.
func drain(t *testing.T, c *PacketConn) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 65536)
	for c.Stats().Queued > 0 { // so ReadFrom does not block
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("ReadFrom: %v", err)
		}
		got = append(got, bytes.Clone(buf[:n]))
	}
	return got
}

// datagram i of a test sequence: i as 4 bytes then filler, length 4+i%60.
func testDatagram(i int) []byte {
	b := make([]byte, 4+i%60)
	binary.BigEndian.PutUint32(b, uint32(i))
	for j := 4; j < len(b); j++ {
		b[j] = byte(i + j)
	}
	return b
}

func writeN(t *testing.T, fc *FaultyConn, dst net.Addr, n int) {
	t.Helper()
	for i := range n {
		b := testDatagram(i)
		if got, err := fc.WriteTo(b, dst); got != len(b) || err != nil {
			t.Fatalf("WriteTo #%d = %d, %v; want %d, nil", i, got, err, len(b))
		}
	}
}

func TestFaultsZeroPassesThrough(t *testing.T) {
	fc, b := faultyPipe(t, Faults{Seed: 1})
	writeN(t, fc, b.LocalAddr(), 100)
	got := drain(t, b)
	if len(got) != 100 {
		t.Fatalf("received %d datagrams, want 100", len(got))
	}
	for i, g := range got {
		if !bytes.Equal(g, testDatagram(i)) {
			t.Errorf("datagram %d = %x, want %x", i, g, testDatagram(i))
		}
	}
	if c := fc.Counts(); c != (Counts{Writes: 100, Sent: 100}) {
		t.Errorf("Counts = %+v", c)
	}
	for _, ev := range fc.Events() {
		if ev.Faults != 0 || ev.Bit != -1 || !bytes.Equal(ev.Sent, ev.Data) {
			t.Errorf("event %+v, want no fault", ev)
		}
	}
}

var allFaults = Faults{Drop: 0.1, Duplicate: 0.1, Reorder: 0.1, Corrupt: 0.1, Truncate: 0.1, Inject: 0.1}

// run writes n test datagrams through faults f, with content made by
// datagram, and returns the events and the datagrams received.
func run(t *testing.T, f Faults, n int, datagram func(int) []byte) ([]Event, [][]byte) {
	fc, b := faultyPipe(t, f)
	for i := range n {
		fc.WriteTo(datagram(i), b.LocalAddr())
	}
	fc.Flush()
	return fc.Events(), drain(t, b)
}

func TestFaultsDeterministic(t *testing.T) {
	f := allFaults
	f.Seed = 42
	ev1, got1 := run(t, f, 2000, testDatagram)
	ev2, got2 := run(t, f, 2000, testDatagram)
	if !reflect.DeepEqual(ev1, ev2) {
		t.Error("same seed, same writes: different events")
	}
	if !reflect.DeepEqual(got1, got2) {
		t.Error("same seed, same writes: different datagrams received")
	}

	// Contents do not matter, only lengths: the same faults, bits and garbage.
	ev3, _ := run(t, f, 2000, func(i int) []byte { return make([]byte, len(testDatagram(i))) })
	for i := range ev1 {
		a, b := ev1[i], ev3[i]
		if a.Faults != b.Faults || a.Bit != b.Bit || len(a.Sent) != len(b.Sent) || !bytes.Equal(a.Garbage, b.Garbage) {
			t.Fatalf("write %d: faults %v bit %d vs %v bit %d with other contents", i, a.Faults, a.Bit, b.Faults, b.Bit)
		}
	}

	f.Seed = 43
	ev4, _ := run(t, f, 2000, testDatagram)
	same := 0
	for i := range ev1 {
		if ev1[i].Faults == ev4[i].Faults {
			same++
		}
	}
	if same == len(ev1) {
		t.Error("seeds 42 and 43 gave the same faults")
	}
}

func TestFaultRates(t *testing.T) {
	const n = 10000
	for _, tc := range []struct {
		f        Faults
		count    func(Counts) int
		lo, hi   int
		received int // datagrams received per datagram written, times n; -1: not checked
	}{
		{Faults{Drop: 0.1}, func(c Counts) int { return c.Dropped }, 800, 1200, -1},
		{Faults{Drop: 0.5}, func(c Counts) int { return c.Dropped }, 4600, 5400, -1},
		{Faults{Duplicate: 0.1}, func(c Counts) int { return c.Duplicated }, 800, 1200, -1},
		{Faults{Corrupt: 0.1}, func(c Counts) int { return c.Corrupted }, 800, 1200, n},
		{Faults{Truncate: 0.1}, func(c Counts) int { return c.Truncated }, 800, 1200, n},
		{Faults{Inject: 0.1}, func(c Counts) int { return c.Injected }, 800, 1200, -1},
		// A held datagram is released by the next one, which is never held:
		// p/(1+p) of the datagrams are held, 909 expected.
		{Faults{Reorder: 0.1}, func(c Counts) int { return c.Reordered }, 700, 1100, n},
		{Faults{Drop: 1}, func(c Counts) int { return c.Dropped }, n, n, 0},
		{Faults{Duplicate: 1}, func(c Counts) int { return c.Duplicated }, n, n, 2 * n},
	} {
		t.Run(fmt.Sprintf("%+v", tc.f), func(t *testing.T) {
			tc.f.Seed = 7
			fc, b := faultyPipe(t, tc.f)
			writeN(t, fc, b.LocalAddr(), n)
			fc.Flush()
			c := fc.Counts()
			if got := tc.count(c); got < tc.lo || got > tc.hi {
				t.Errorf("count = %d, want in [%d, %d]; Counts = %+v", got, tc.lo, tc.hi, c)
			}
			got := len(drain(t, b))
			if got != c.Sent {
				t.Errorf("received %d datagrams, Counts.Sent = %d", got, c.Sent)
			}
			if tc.received >= 0 && got != tc.received {
				t.Errorf("received %d datagrams, want %d", got, tc.received)
			}
			// The events agree with the counters.
			var fromEvents Counts
			for _, ev := range fc.Events() {
				for bit, p := range []*int{&fromEvents.Dropped, &fromEvents.Duplicated, &fromEvents.Reordered,
					&fromEvents.Corrupted, &fromEvents.Truncated, &fromEvents.Injected, &fromEvents.Delayed} {
					if ev.Faults&(1<<bit) != 0 {
						*p++
					}
				}
			}
			fromEvents.Writes, fromEvents.Sent = c.Writes, c.Sent
			if fromEvents != c {
				t.Errorf("events give %+v, Counts %+v", fromEvents, c)
			}
		})
	}
}

func TestCorruptFlipsOneBit(t *testing.T) {
	const n = 500
	events, got := run(t, Faults{Corrupt: 1, Seed: 3}, n, testDatagram)
	if len(got) != n {
		t.Fatalf("received %d datagrams, want %d", len(got), n)
	}
	bitsSeen := make(map[int]bool)
	for i, g := range got {
		want := testDatagram(i)
		ev := events[i]
		if ev.Faults != Corrupted || !bytes.Equal(g, ev.Sent) {
			t.Fatalf("datagram %d: event %v, received %x, recorded %x", i, ev.Faults, g, ev.Sent)
		}
		if len(g) != len(want) {
			t.Fatalf("datagram %d: length %d, want %d", i, len(g), len(want))
		}
		diff := 0
		for j := range g {
			diff += bits.OnesCount8(g[j] ^ want[j])
		}
		if diff != 1 {
			t.Fatalf("datagram %d: %d bits differ, want 1", i, diff)
		}
		if g[ev.Bit/8]^want[ev.Bit/8] != 1<<(ev.Bit%8) {
			t.Fatalf("datagram %d: Event.Bit = %d is not the bit flipped", i, ev.Bit)
		}
		bitsSeen[ev.Bit%8] = true
	}
	if len(bitsSeen) != 8 {
		t.Errorf("flipped bits at only %d of 8 positions in a byte", len(bitsSeen))
	}

	// An empty datagram cannot be corrupted.
	events, got = run(t, Faults{Corrupt: 1}, 1, func(int) []byte { return nil })
	if len(got) != 1 || len(got[0]) != 0 || events[0].Faults != 0 {
		t.Errorf("empty datagram: received %q, faults %v", got, events[0].Faults)
	}
}

func TestTruncateShortens(t *testing.T) {
	const n = 500
	events, got := run(t, Faults{Truncate: 1, Seed: 4}, n, testDatagram)
	if len(got) != n {
		t.Fatalf("received %d datagrams, want %d", len(got), n)
	}
	lengths := make(map[int]bool)
	for i, g := range got {
		want := testDatagram(i)
		if len(g) >= len(want) || !bytes.HasPrefix(want, g) {
			t.Fatalf("datagram %d: received %x, want a strict prefix of %x", i, g, want)
		}
		if events[i].Faults != Truncated || !bytes.Equal(events[i].Sent, g) {
			t.Fatalf("datagram %d: event %+v", i, events[i])
		}
		lengths[len(g)] = true
	}
	if !lengths[0] || len(lengths) < 30 {
		t.Errorf("truncated to only %d distinct lengths (0 included: %v)", len(lengths), lengths[0])
	}
}

func TestCorruptAfterTruncate(t *testing.T) {
	events, got := run(t, Faults{Truncate: 1, Corrupt: 1, Seed: 5}, 300, testDatagram)
	for i, g := range got {
		ev := events[i]
		if len(ev.Sent) == 0 {
			if ev.Faults != Truncated {
				t.Errorf("datagram %d truncated to nothing: faults %v", i, ev.Faults)
			}
			continue
		}
		if ev.Faults != Truncated|Corrupted || ev.Bit >= 8*len(g) {
			t.Fatalf("datagram %d: faults %v, bit %d of %d bytes", i, ev.Faults, ev.Bit, len(g))
		}
	}
}

func TestDuplicate(t *testing.T) {
	_, got := run(t, Faults{Duplicate: 1}, 10, testDatagram)
	if len(got) != 20 {
		t.Fatalf("received %d datagrams, want 20", len(got))
	}
	for i := range 10 {
		if !bytes.Equal(got[2*i], testDatagram(i)) || !bytes.Equal(got[2*i+1], testDatagram(i)) {
			t.Errorf("datagrams %d and %d are not two copies of %d", 2*i, 2*i+1, i)
		}
	}
}

func TestReorder(t *testing.T) {
	fc, b := faultyPipe(t, Faults{Reorder: 1})
	writeN(t, fc, b.LocalAddr(), 9)
	got := drain(t, b)
	order := func(got [][]byte) []int {
		var o []int
		for _, g := range got {
			o = append(o, int(binary.BigEndian.Uint32(g)))
		}
		return o
	}
	if want := []int{1, 0, 3, 2, 5, 4, 7, 6}; !reflect.DeepEqual(order(got), want) {
		t.Errorf("order = %v, want %v", order(got), want)
	}
	if err := fc.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if got := order(drain(t, b)); !reflect.DeepEqual(got, []int{8}) {
		t.Errorf("after Flush: %v, want [8]", got)
	}
	if c := fc.Counts(); c.Reordered != 5 || c.Sent != 9 {
		t.Errorf("Counts = %+v, want Reordered 5, Sent 9", c)
	}

	// Close discards a held datagram.
	fc.WriteTo([]byte("held"), b.LocalAddr())
	fc.Close()
	if c := fc.Counts(); c.Discarded != 1 || c.Sent != 9 {
		t.Errorf("after Close: Counts = %+v, want Discarded 1, Sent 9", c)
	}
}

func TestReorderSkipsDropped(t *testing.T) {
	// With both faults certain, every datagram is dropped first: none is held.
	fc, b := faultyPipe(t, Faults{Reorder: 1, Drop: 1})
	writeN(t, fc, b.LocalAddr(), 3)
	if c := fc.Counts(); c.Reordered != 0 || c.Dropped != 3 || c.Sent != 0 {
		t.Errorf("Counts = %+v", c)
	}
}

func TestInject(t *testing.T) {
	const n = 200
	events, got := run(t, Faults{Inject: 1, Seed: 6}, n, testDatagram)
	if len(got) != 2*n {
		t.Fatalf("received %d datagrams, want %d", len(got), 2*n)
	}
	for i := range n {
		ev := events[i]
		if ev.Faults != Injected || len(ev.Garbage) < 1 || len(ev.Garbage) > len(ev.Data) {
			t.Fatalf("write %d: faults %v, garbage of %d bytes for %d", i, ev.Faults, len(ev.Garbage), len(ev.Data))
		}
		if !bytes.Equal(got[2*i], ev.Garbage) || !bytes.Equal(got[2*i+1], ev.Data) {
			t.Fatalf("write %d: received %x then %x, want garbage %x then %x", i, got[2*i], got[2*i+1], ev.Garbage, ev.Data)
		}
	}
	// Garbage is sent even when the datagram is dropped.
	_, got = run(t, Faults{Inject: 1, Drop: 1}, 5, testDatagram)
	if len(got) != 5 {
		t.Errorf("Inject and Drop: received %d datagrams, want 5", len(got))
	}
}

func TestDelay(t *testing.T) {
	const writers, each, delay = 4, 50, 20 * time.Millisecond
	fc, b := faultyPipe(t, Faults{Delay: delay, Duplicate: 0.2, Reorder: 0.2, Seed: 8})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				fc.WriteTo([]byte(fmt.Sprintf("%d/%d", w, i)), b.LocalAddr())
			}
		}()
	}
	wg.Wait()
	fc.Flush()
	c := fc.Counts()
	want := writers*each + c.Duplicated
	seen := make(map[string]int)
	for range want {
		g, _ := read(t, b)
		seen[string(g)]++
	}
	if len(seen) != writers*each {
		t.Errorf("received %d distinct datagrams, want %d", len(seen), writers*each)
	}
	if c := fc.Counts(); c.Sent != want || c.Delayed < writers*each/2 {
		t.Errorf("Counts = %+v, want Sent %d and most datagrams delayed", c, want)
	}
	for _, ev := range fc.Events() {
		if ev.Delay < 0 || ev.Delay > delay || (ev.Delay > 0) != (ev.Faults&Delayed != 0) {
			t.Errorf("event %d: delay %v, faults %v", ev.Seq, ev.Delay, ev.Faults)
		}
	}
}

func TestCloseDiscardsDelayed(t *testing.T) {
	fc, b := faultyPipe(t, Faults{Delay: time.Hour, Seed: 9})
	writeN(t, fc, b.LocalAddr(), 10)
	closed := make(chan error, 1)
	go func() { closed <- fc.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(bound):
		t.Fatal("Close did not return with delayed datagrams pending")
	}
	if c := fc.Counts(); c.Discarded != c.Delayed || c.Delayed < 9 || c.Sent != 0 {
		t.Errorf("Counts = %+v, want every delayed datagram discarded", c)
	}
}

func TestFaultyConnClosed(t *testing.T) {
	fc, b := faultyPipe(t, Faults{Drop: 1})
	if err := fc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := fc.WriteTo([]byte("x"), b.LocalAddr())
	expectClosed(t, "WriteTo after Close, even with Drop 1", err)
	expectClosed(t, "ReadFrom after Close", readErr(t, fc))
	expectClosed(t, "second Close", fc.Close())
	if c := fc.Counts(); c.Writes != 0 {
		t.Errorf("Counts = %+v after a write after Close", c)
	}
}

func TestFaultyConnPassesReadsAndErrors(t *testing.T) {
	a, b := Pipe()
	defer b.Close()
	fa := NewFaultyConn(a, Faults{Corrupt: 1})
	defer fa.Close()
	if fa.LocalAddr().String() != "127.0.0.1:1" {
		t.Errorf("LocalAddr = %v", fa.LocalAddr())
	}
	b.WriteTo([]byte("clean"), fa.LocalAddr())
	if got, _ := read(t, fa); string(got) != "clean" {
		t.Errorf("read %q through the FaultyConn, want it unchanged", got)
	}
	fa.SetReadDeadline(time.Now().Add(-time.Second))
	expectTimeout(t, readErr(t, fa))
	_, err := fa.WriteTo(make([]byte, DefaultMaxDatagram+1), b.LocalAddr())
	if err == nil {
		t.Error("oversized WriteTo through the FaultyConn succeeded")
	}
	if c := fa.Counts(); c.Errors != 1 {
		t.Errorf("Counts = %+v, want Errors 1", c)
	}
}

func TestFaultsValidate(t *testing.T) {
	for _, f := range []Faults{{Drop: -0.1}, {Corrupt: 1.1}, {Inject: math.NaN()}, {Delay: -time.Second}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewFaultyConn(%+v) did not panic", f)
				}
			}()
			NewFaultyConn(nil, f)
		}()
	}
}

func TestFaultString(t *testing.T) {
	for f, want := range map[Fault]string{
		0:                     "none",
		Dropped:               "dropped",
		Corrupted | Truncated: "corrupted|truncated",
		Delayed | 0x80:        "delayed|0x80",
	} {
		if got := f.String(); got != want {
			t.Errorf("Fault(%#x).String() = %q, want %q", uint8(f), got, want)
		}
	}
}

// TestReceiverDropsDamaged shows how a test uses the record: a receiver
// that checks a CRC-32 must accept every datagram that arrived intact and
// none that was corrupted, truncated or injected.
func TestReceiverDropsDamaged(t *testing.T) {
	fc, b := faultyPipe(t, Faults{Drop: 0.1, Duplicate: 0.1, Reorder: 0.1, Corrupt: 0.2, Truncate: 0.1, Inject: 0.1, Seed: 10})
	const n = 3000
	for i := range n {
		p := binary.BigEndian.AppendUint32(nil, uint32(i))
		p = append(p, testDatagram(i)...)
		fc.WriteTo(binary.BigEndian.AppendUint32(p, crc32.ChecksumIEEE(p)), b.LocalAddr())
	}
	fc.Flush()
	accepted := make(map[uint32]bool)
	rejected := 0
	for _, g := range drain(t, b) {
		if len(g) < 8 || crc32.ChecksumIEEE(g[:len(g)-4]) != binary.BigEndian.Uint32(g[len(g)-4:]) {
			rejected++
			continue
		}
		accepted[binary.BigEndian.Uint32(g)] = true
	}
	damaged := 0
	for _, ev := range fc.Events() {
		intact := ev.Faults&(Dropped|Corrupted|Truncated) == 0
		if ev.Faults&Injected != 0 {
			damaged++
		}
		if !intact && ev.Faults&Dropped == 0 {
			damaged++
			if ev.Faults&Duplicated != 0 {
				damaged++
			}
		}
		if accepted[uint32(ev.Seq)] != intact {
			t.Errorf("write %d (%v): accepted %v", ev.Seq, ev.Faults, accepted[uint32(ev.Seq)])
		}
	}
	if rejected != damaged || damaged == 0 {
		t.Errorf("receiver rejected %d datagrams, %d damaged ones were sent", rejected, damaged)
	}
}

func TestFaultyConnOverUDPSocket(t *testing.T) {
	a, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no UDP socket: %v", err)
	}
	b, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		t.Skipf("no UDP socket: %v", err)
	}
	defer b.Close()
	fa := NewFaultyConn(a, Faults{Drop: 0.5, Truncate: 0.5, Seed: 11})
	defer fa.Close()
	for i := range 50 {
		if _, err := fa.WriteTo(testDatagram(i), b.LocalAddr()); err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
	}
	var want [][]byte
	for _, ev := range fa.Events() {
		if ev.Sent != nil {
			want = append(want, ev.Sent)
		}
	}
	if len(want) == 0 || len(want) == 50 {
		t.Fatalf("%d of 50 datagrams sent with Drop 0.5", len(want))
	}
	for i, w := range want {
		if got, _ := read(t, b); !bytes.Equal(got, w) {
			t.Fatalf("datagram %d over loopback = %x, want %x", i, got, w)
		}
	}
}
