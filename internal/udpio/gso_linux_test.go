//go:build !vaultudp_portable

package udpio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sendErr is err as a failed sendmsg on a *net.UDPConn returns it.
func sendErr(errno syscall.Errno) error {
	return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmsg", errno)}
}

// Only EIO, however wrapped, means the device cannot do GSO.
func TestGSORefused(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{unix.EIO, true},
		{sendErr(unix.EIO), true},
		{fmt.Errorf("train: %w", sendErr(unix.EIO)), true},
		{sendErr(unix.EINVAL), false},
		{sendErr(unix.ENOPROTOOPT), false},
		{sendErr(unix.EOPNOTSUPP), false},
		{sendErr(unix.ENOBUFS), false},
		{sendErr(unix.EMSGSIZE), false},
		{sendErr(unix.ECONNREFUSED), false},
		{net.ErrClosed, false},
		{errors.New("EIO"), false},
	} {
		if got := gsoRefused(tc.err); got != tc.want {
			t.Errorf("gsoRefused(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func addrOf(pc net.PacketConn) netip.AddrPort { return AddrPortOf(pc.LocalAddr()) }

// gsoSocket returns a Socket with GSO and a plain receiver for it.
func gsoSocket(t *testing.T) (*udpSocket, *net.UDPConn) {
	t.Helper()
	s := New(listen(t, "udp4", "127.0.0.1:0")).(*udpSocket)
	if !s.Caps().GSO {
		t.Skip("the kernel has no UDP GSO (getsockopt UDP_SEGMENT failed)")
	}
	return s, listen(t, "udp4", "127.0.0.1:0")
}

// train lays out count datagrams of size bytes, each numbered.
func train(count, size int) []byte {
	b := make([]byte, count*size)
	for i := 0; i < count; i++ {
		binary.BigEndian.PutUint16(b[i*size:], uint16(i))
	}
	return b
}

// receiveUntilEnd reads r until the datagram "end" (sent after what is
// counted) and returns how often each number arrived.
func receiveUntilEnd(t *testing.T, r *net.UDPConn) map[uint16]int {
	t.Helper()
	got := make(map[uint16]int)
	buf := make([]byte, 2048)
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 10000; i++ {
		n, _, err := r.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("reading after %d datagrams: %v", len(got), err)
		}
		if string(buf[:n]) == "end" {
			return got
		}
		got[binary.BigEndian.Uint16(buf)]++
	}
	t.Fatal("no end")
	return nil
}

// A train the kernel takes in three GSO sends (64, 64 and 22 segments)
// whose second send fails: EIO turns GSO off and sends the second and
// third parts one by one, so every datagram arrives exactly once; any
// other error ends the write there, says how many went out, and leaves
// GSO on.
func TestGSOFallbackSendsOnlyTheRest(t *testing.T) {
	const count, size = 150, 100
	for _, tc := range []struct {
		errno    syscall.Errno
		wantN    int
		wantGSO  bool
		wantFail bool
	}{
		{unix.EIO, count, false, false},
		{unix.ENOBUFS, 64, true, true},
		{unix.EINVAL, 64, true, true},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			s, r := gsoSocket(t)
			calls := 0
			s.sys.sendFault = func() error {
				calls++
				if calls == 2 {
					return sendErr(tc.errno)
				}
				return nil
			}
			to := addrOf(r)
			n, err := s.WriteSegments(train(count, size), size, to, netip.Addr{})
			if n != tc.wantN || (err != nil) != tc.wantFail || (err != nil && !errors.Is(err, tc.errno)) {
				t.Fatalf("WriteSegments = %d, %v; want %d (failing: %v)", n, err, tc.wantN, tc.wantFail)
			}
			if got := s.Caps().GSO; got != tc.wantGSO {
				t.Errorf("GSO after %v: %v, want %v", tc.errno, got, tc.wantGSO)
			}
			if err := s.WriteTo([]byte("end"), to, netip.Addr{}); err != nil {
				t.Fatal(err)
			}
			got := receiveUntilEnd(t, r)
			for i := 0; i < count; i++ {
				want := 0
				if i < tc.wantN {
					want = 1
				}
				if got[uint16(i)] != want {
					t.Errorf("datagram %d arrived %d times, want %d", i, got[uint16(i)], want)
				}
			}
			// Once off, GSO is not tried again; left on, it is.
			before := calls
			if n, err := s.WriteSegments(train(3, size), size, to, netip.Addr{}); n != 3 || err != nil {
				t.Fatalf("second WriteSegments = %d, %v", n, err)
			}
			if tried := calls > before; tried != tc.wantGSO {
				t.Errorf("second train tried GSO: %v, want %v", tried, tc.wantGSO)
			}
		})
	}
}
