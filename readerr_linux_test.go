package vaultudp

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A *net.UDPConn whose reads fail for good: its descriptor is made a
// /dev/null one under it, so that every read fails with ENOTSOCK. A
// goroutine in ReadFrom reads the socket itself (direct.go) and returns
// the error at once, as *net.UDPConn does, rather than reading again.
func TestReadErrorDirectSurfaces(t *testing.T) {
	parallel(t)
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Wrap(uc, &Config{})
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, c)
	if !c.sock.Load().Caps().Deadlines {
		t.Fatal("a *net.UDPConn without Caps.Deadlines: no direct reads to test")
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	rc, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dupErr error
	if err := rc.Control(func(fd uintptr) { dupErr = unix.Dup3(int(null.Fd()), int(fd), unix.O_CLOEXEC) }); err != nil || dupErr != nil {
		t.Fatalf("dup3: %v, %v", err, dupErr)
	}
	c.SetReadDeadline(time.Now().Add(waitLong))
	start := time.Now()
	buf := make([]byte, 2048)
	for i := 0; i < 3; i++ {
		_, _, err := c.ReadFrom(buf)
		var oe *net.OpError
		if !errors.Is(err, unix.ENOTSOCK) || !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("ReadFrom %d = %v, want ENOTSOCK in a read *net.OpError", i, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("three ReadFrom errors took %v", d)
	}
	t.Logf("three ReadFrom errors in %v", time.Since(start))
}
