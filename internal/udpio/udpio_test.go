package udpio

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// listen opens a UDP socket on address ("127.0.0.1:0", say), closed when
// the test ends.
func listen(t *testing.T, network, address string) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenPacket(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// opaque hides that a PacketConn is a *net.UDPConn.
type opaque struct{ net.PacketConn }

// readAll reads from r into fresh buffers until want datagrams are in,
// failing the test after a deadline.
func readAll(t *testing.T, s Socket, r Reader, want int) []Message {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []Message
	for len(got) < want {
		ms := make([]Message, 8)
		for i := range ms {
			ms[i].Buf = make([]byte, 2048)
		}
		n, err := r.Read(ms)
		if err != nil {
			t.Fatalf("Read after %d of %d: %v", len(got), want, err)
		}
		if n < 1 || n > len(ms) {
			t.Fatalf("Read returned %d for %d messages", n, len(ms))
		}
		got = append(got, ms[:n]...)
	}
	return got
}

// Over a PacketConn that is not a *net.UDPConn the socket has no
// capabilities and works through ReadFrom and WriteTo; over a
// *net.UDPConn it may interrupt reads, and on Linux (but for the
// vaultudp_portable build) it batches.
func TestCapsAndFallback(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(*net.UDPConn) net.PacketConn
		want Caps
	}{
		{"opaque", func(u *net.UDPConn) net.PacketConn { return opaque{u} }, Caps{}},
		{"udp", func(u *net.UDPConn) net.PacketConn { return u }, Caps{Deadlines: true, IPv4Only: true, BatchRead: linuxIO}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(tc.wrap(listen(t, "udp4", "127.0.0.1:0")))
			b := New(tc.wrap(listen(t, "udp4", "127.0.0.1:0")))
			got := a.Caps()
			got.GSO, got.GRO = false, false // the kernel's to decide
			if got != tc.want {
				t.Errorf("Caps = %+v, want %+v", got, tc.want)
			}
			to := AddrPortOf(b.LocalAddr())
			for _, m := range []string{"one", "two", "three"} {
				if err := a.WriteTo([]byte(m), to, netip.Addr{}); err != nil {
					t.Fatal(err)
				}
			}
			// A train of 4-byte segments, the last shorter.
			if n, err := a.WriteSegments([]byte("aaaabbbbcc"), 4, to, netip.Addr{}); n != 3 || err != nil {
				t.Fatalf("WriteSegments = %d, %v; want 3, nil", n, err)
			}
			ms := readAll(t, b, b.NewReader(), 6)
			from := AddrPortOf(a.LocalAddr())
			for i, w := range []string{"one", "two", "three", "aaaa", "bbbb", "cc"} {
				m := ms[i]
				if string(m.Buf[:m.N]) != w || m.Addr != from || m.Truncated || m.Local.IsValid() {
					t.Errorf("datagram %d: %q from %v (truncated %v, local %v), want %q from %v", i, m.Buf[:m.N], m.Addr, m.Truncated, m.Local, w, from)
				}
			}
			// A datagram larger than the buffer is reported cut.
			if err := a.WriteTo(bytes.Repeat([]byte("x"), 100), to, netip.Addr{}); err != nil {
				t.Fatal(err)
			}
			small := []Message{{Buf: make([]byte, 10)}}
			b.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := b.NewReader().Read(small); n != 1 || err != nil || !small[0].Truncated || small[0].N != 10 {
				t.Fatalf("Read of a long datagram = %d, %v, %+v; want it cut to 10 and marked", n, err, small[0])
			}
			// A past deadline ends a read with os.ErrDeadlineExceeded.
			b.SetReadDeadline(time.Unix(1, 0))
			if _, err := b.NewReader().Read(small); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read past the deadline: %v", err)
			}
			if _, err := a.WriteSegments([]byte("x"), 0, to, netip.Addr{}); !errors.Is(err, ErrSegmentSize) {
				t.Fatalf("WriteSegments with size 0: %v", err)
			}
			if err := a.SetReadBuffer(1 << 20); err != nil {
				t.Errorf("SetReadBuffer: %v", err)
			}
			if err := a.SetWriteBuffer(1 << 20); err != nil {
				t.Errorf("SetWriteBuffer: %v", err)
			}
		})
	}
}
