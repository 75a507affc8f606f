package vaultudp

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// ReadFromUDP and WriteToUDP carry datagrams as ReadFrom and WriteTo do,
// and behave as *net.UDPConn's on their edges: a nil destination and a
// read that fails.
func TestReadFromUDPWriteToUDP(t *testing.T) {
	parallel(t)
	a, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// The signatures are *net.UDPConn's: code written for one compiles
	// against the other.
	type udpConn interface {
		ReadFromUDP([]byte) (int, *net.UDPAddr, error)
		WriteToUDP([]byte, *net.UDPAddr) (int, error)
	}
	var _ udpConn = (*net.UDPConn)(nil)
	var _ udpConn = a

	to := b.LocalAddr().(*net.UDPAddr)
	if n, err := a.WriteToUDP([]byte("over WriteToUDP"), to); err != nil || n != len("over WriteToUDP") {
		t.Fatalf("WriteToUDP: %d, %v", n, err)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, from, err := b.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("ReadFromUDP: %v", err)
	}
	if string(buf[:n]) != "over WriteToUDP" || from.String() != a.LocalAddr().String() {
		t.Fatalf("ReadFromUDP: %q from %v, want %q from %v", buf[:n], from, "over WriteToUDP", a.LocalAddr())
	}

	// A reply the other way, cut to the buffer as *net.UDPConn cuts it.
	if _, err := b.WriteToUDP([]byte("0123456789"), from); err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	small := make([]byte, 4)
	n, _, err = a.ReadFromUDP(small)
	if err != nil || string(small[:n]) != "0123" {
		t.Fatalf("ReadFromUDP into 4 bytes: %q, %v; want \"0123\"", small[:n], err)
	}

	// A nil address: *net.UDPConn's error, nothing sent.
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, wantErr := raw.WriteToUDP([]byte("x"), nil)
	before := a.Stats().DatagramsOut
	n, err = a.WriteToUDP([]byte("x"), nil)
	var oe *net.OpError
	if n != 0 || !errors.As(err, &oe) || oe.Op != "write" || wantErr == nil || oe.Err.Error() != errors.Unwrap(wantErr).Error() {
		t.Errorf("WriteToUDP(nil) = %d, %v; want 0 and an OpError like *net.UDPConn's %v", n, err, wantErr)
	}
	if after := a.Stats().DatagramsOut; after != before {
		t.Errorf("WriteToUDP(nil) sent: DatagramsOut %d -> %d", before, after)
	}

	// A failed read returns a nil address, as *net.UDPConn's.
	a.SetReadDeadline(time.Now().Add(-time.Second))
	n, addr, err := a.ReadFromUDP(buf)
	if n != 0 || addr != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFromUDP past its deadline = %d, %v, %v; want 0, nil, a deadline error", n, addr, err)
	}
	a.Close()
	if _, addr, err := a.ReadFromUDP(buf); addr != nil || !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFromUDP after Close = %v, %v; want nil, net.ErrClosed", addr, err)
	}
}
