//go:build !vaultudp_portable

package udpio

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// groEnabled reports whether the kernel has UDP_GRO on for s.
func groEnabled(t *testing.T, s Socket) bool {
	t.Helper()
	v, err := -1, error(nil)
	s.(*udpSocket).sys.rc.Control(func(fd uintptr) { v, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO) })
	if err != nil {
		t.Fatal(err)
	}
	return v != 0
}

// A GSO train over loopback reaches a GRO socket as one coalesced read
// (the kernel does not segment it for a socket that takes GRO): the
// Reader splits it into the datagrams sent, in order and intact, returns
// those that do not fit one call in the next, without reading the socket,
// and marks cut the datagrams larger than their buffers. The socket turns
// GRO on only once it has a backlog: reads that find datagrams waiting.
func TestGROSplitsCoalescedReads(t *testing.T) {
	r := New(listen(t, "udp4", "127.0.0.1:0"))
	if !r.Caps().GRO {
		t.Skipf("no UDP GRO here (%+v)", r.Caps())
	}
	w, _ := gsoSocket(t)
	to := AddrPortOf(r.LocalAddr())
	rd := r.NewReader()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	ms := make([]Message, 16)
	for i := range ms {
		ms[i].Buf = make([]byte, 2048)
	}
	from := AddrPortOf(w.LocalAddr())
	if groEnabled(t, r) {
		t.Fatal("GRO on before any read")
	}
	// A backlog: every read finds datagrams waiting (on loopback a send
	// has queued its datagram when it returns).
	for i := 0; i < groLoadReads; i++ {
		if err := w.WriteTo([]byte("load"), to, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
	}
	for got := 0; got < groLoadReads; {
		n, err := rd.Read(ms)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	if !groEnabled(t, r) {
		t.Fatalf("GRO still off after %d reads that found datagrams waiting", groLoadReads)
	}

	const count, size = 100, 50
	b := train(count, size)
	b = b[:len(b)-7] // the last one shorter
	if n, err := w.WriteSegments(b, size, to, netip.Addr{}); n != count || err != nil {
		t.Fatalf("WriteSegments = %d, %v", n, err)
	}
	got, split := 0, false
	for reads := 0; got < count && reads < 2*count; reads++ {
		n, err := rd.Read(ms)
		if err != nil {
			t.Fatalf("Read after %d datagrams: %v", got, err)
		}
		for _, m := range ms[:n] {
			want := size
			if got == count-1 {
				want = size - 7
			}
			if m.N != want || m.Truncated || m.Addr != from || binary.BigEndian.Uint16(m.Buf) != uint16(got) {
				t.Fatalf("datagram %d: %d bytes (truncated %v) numbered %d from %v; want %d bytes from %v",
					got, m.N, m.Truncated, binary.BigEndian.Uint16(m.Buf), m.Addr, want, from)
			}
			got++
		}
		if rd.Buffered() > 0 {
			split = true
		}
	}
	if got != count {
		t.Fatalf("%d datagrams read, want %d", got, count)
	}
	if rd.Buffered() != 0 {
		t.Errorf("Buffered = %d after all were read", rd.Buffered())
	}
	if !split {
		t.Errorf("no read held more datagrams than fit: the train was not coalesced")
	}

	// Buffers shorter than the segments: each datagram cut and marked.
	if n, err := w.WriteSegments(train(4, size), size, to, netip.Addr{}); n != 4 || err != nil {
		t.Fatalf("WriteSegments = %d, %v", n, err)
	}
	small := make([]Message, 4)
	for i := range small {
		small[i].Buf = make([]byte, 10)
	}
	for got := 0; got < 4; {
		n, err := rd.Read(small[got:])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range small[got : got+n] {
			if m.N != 10 || !m.Truncated {
				t.Fatalf("short buffer: %d bytes, truncated %v; want 10, true", m.N, m.Truncated)
			}
		}
		got += n
	}
}

// A released Reader with buffers of its own (GRO) gives them up and
// reads no more.
func TestReleasedReaderFails(t *testing.T) {
	r := New(listen(t, "udp4", "127.0.0.1:0"))
	if !r.Caps().GRO {
		t.Skipf("no UDP GRO here (%+v)", r.Caps())
	}
	rd := r.NewReader()
	rd.Release()
	ms := []Message{{Buf: make([]byte, 2048)}}
	if n, err := rd.Read(ms); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Release = %d, %v; want 0, net.ErrClosed", n, err)
	}
	rd.Release() // twice: nothing more
}
