package vaulttest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bound is how long a test waits for something that should happen at once
// before declaring it did not happen.
const bound = 10 * time.Second

func mustListen(t *testing.T, n *Network, addr string) *PacketConn {
	t.Helper()
	c, err := n.Listen(netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatalf("Listen(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustPipe(t *testing.T) (a, b *PacketConn) {
	a, b = Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// read reads one datagram with a generous deadline.
func read(t *testing.T, c net.PacketConn) ([]byte, net.Addr) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(bound))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}
	return buf[:n], from
}

// readErr calls ReadFrom on c, which should not block, and returns its
// error. If the call blocks for longer than bound, readErr closes c to
// unblock it and fails the test.
func readErr(t *testing.T, c net.PacketConn) error {
	t.Helper()
	return callErr(t, c, func() error {
		_, _, err := c.ReadFrom(make([]byte, 65536))
		return err
	})
}

// callErr is as readErr for any call that reads from c.
func callErr(t *testing.T, c net.PacketConn, read func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- read() }()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		c.Close()
		<-done
		t.Fatalf("read blocked for %v", bound)
		return nil
	}
}

// expectTimeout asserts that err is a read or write timeout as net reports it.
func expectTimeout(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want os.ErrDeadlineExceeded", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v, want a net.Error with Timeout() true", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("err = %T, want *net.OpError", err)
	}
}

func expectClosed(t *testing.T, op string, err error) {
	t.Helper()
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("%s: err = %v, want net.ErrClosed", op, err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("%s: err = %T, want *net.OpError", op, err)
	}
}

func TestPipeRoundTrip(t *testing.T) {
	a, b := mustPipe(t)
	if n, err := a.WriteTo([]byte("ping"), b.LocalAddr()); n != 4 || err != nil {
		t.Fatalf("a.WriteTo = %d, %v", n, err)
	}
	got, from := read(t, b)
	if string(got) != "ping" {
		t.Errorf("b read %q, want ping", got)
	}
	if from.String() != a.LocalAddr().String() {
		t.Errorf("b read from %v, want %v", from, a.LocalAddr())
	}
	if _, err := b.WriteTo([]byte("pong"), from); err != nil {
		t.Fatalf("b.WriteTo: %v", err)
	}
	if got, _ := read(t, a); string(got) != "pong" {
		t.Errorf("a read %q, want pong", got)
	}
}

func TestPipeAddresses(t *testing.T) {
	a, b := mustPipe(t)
	for _, tc := range []struct {
		c    *PacketConn
		want string
	}{{a, "127.0.0.1:1"}, {b, "127.0.0.1:2"}} {
		addr, ok := tc.c.LocalAddr().(*net.UDPAddr)
		if !ok {
			t.Fatalf("LocalAddr is %T, want *net.UDPAddr", tc.c.LocalAddr())
		}
		if addr.String() != tc.want || addr.Network() != "udp" {
			t.Errorf("LocalAddr = %s %s, want udp %s", addr.Network(), addr, tc.want)
		}
	}
}

func TestReadFromReturnsFreshUDPAddr(t *testing.T) {
	a, b := mustPipe(t)
	a.WriteTo([]byte("1"), b.LocalAddr())
	a.WriteTo([]byte("2"), b.LocalAddr())
	_, from1 := read(t, b)
	u1, ok := from1.(*net.UDPAddr)
	if !ok {
		t.Fatalf("ReadFrom address is %T, want *net.UDPAddr", from1)
	}
	u1.IP[0] = 10 // a caller may keep and modify the address
	u1.Port = 99
	_, from2 := read(t, b)
	if got := from2.String(); got != "127.0.0.1:1" {
		t.Errorf("second source address = %s, want 127.0.0.1:1", got)
	}
	if la := a.LocalAddr().String(); la != "127.0.0.1:1" {
		t.Errorf("LocalAddr after modifying a returned address = %s", la)
	}
}

func TestAddrPortMethods(t *testing.T) {
	a, b := mustPipe(t)
	// An IPv4-mapped IPv6 address reaches the IPv4 endpoint.
	dst := netip.MustParseAddrPort("[::ffff:127.0.0.1]:2")
	if n, err := a.WriteToUDPAddrPort([]byte("x"), dst); n != 1 || err != nil {
		t.Fatalf("WriteToUDPAddrPort = %d, %v", n, err)
	}
	b.SetReadDeadline(time.Now().Add(bound))
	buf := make([]byte, 10)
	n, from, err := b.ReadFromUDPAddrPort(buf)
	if err != nil || n != 1 || buf[0] != 'x' {
		t.Fatalf("ReadFromUDPAddrPort = %d, %v, %v", n, from, err)
	}
	if want := netip.MustParseAddrPort("127.0.0.1:1"); from != want {
		t.Errorf("source = %v, want %v", from, want)
	}
	if _, err := a.WriteToUDPAddrPort([]byte("x"), netip.AddrPort{}); err == nil {
		t.Error("WriteToUDPAddrPort to the zero AddrPort succeeded")
	}
}

func TestWriteToSelf(t *testing.T) {
	a, _ := mustPipe(t)
	a.WriteTo([]byte("me"), a.LocalAddr())
	if got, from := read(t, a); string(got) != "me" || from.String() != "127.0.0.1:1" {
		t.Errorf("read %q from %v", got, from)
	}
}

func TestListen(t *testing.T) {
	n := NewNetwork()
	mustListen(t, n, "10.0.0.1:53")
	_, err := n.Listen(netip.MustParseAddrPort("10.0.0.1:53"))
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second Listen on 10.0.0.1:53: err = %v, want EADDRINUSE", err)
	}
	_, err = n.Listen(netip.MustParseAddrPort("[::ffff:10.0.0.1]:53"))
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Listen on the mapped address: err = %v, want EADDRINUSE", err)
	}
	// Same port, other IP: fine.
	mustListen(t, n, "10.0.0.2:53")
	mustListen(t, n, "[fd00::1]:53")

	for _, bad := range []netip.AddrPort{{}, netip.MustParseAddrPort("0.0.0.0:5"), netip.MustParseAddrPort("[::]:5")} {
		if c, err := n.Listen(bad); err == nil {
			c.Close()
			t.Errorf("Listen(%v) succeeded, want an error", bad)
		}
	}
}

func TestListenPortZero(t *testing.T) {
	n := new(Network) // the zero value works
	var ports []int
	for range 3 {
		c := mustListen(t, n, "192.0.2.1:0")
		ports = append(ports, c.LocalAddr().(*net.UDPAddr).Port)
	}
	want := []int{FirstEphemeralPort, FirstEphemeralPort + 1, FirstEphemeralPort + 2}
	if fmt.Sprint(ports) != fmt.Sprint(want) {
		t.Errorf("ports = %v, want %v", ports, want)
	}
	// A port taken explicitly is skipped.
	mustListen(t, n, fmt.Sprintf("192.0.2.1:%d", FirstEphemeralPort+3))
	c := mustListen(t, n, "192.0.2.1:0")
	if got := c.LocalAddr().(*net.UDPAddr).Port; got != FirstEphemeralPort+4 {
		t.Errorf("port = %d, want %d", got, FirstEphemeralPort+4)
	}
}

func TestCloseFreesAddress(t *testing.T) {
	n := NewNetwork()
	c := mustListen(t, n, "127.0.0.1:7")
	c.Close()
	mustListen(t, n, "127.0.0.1:7")
}

func TestWriteCopiesBuffer(t *testing.T) {
	a, b := mustPipe(t)
	buf := []byte("original")
	a.WriteTo(buf, b.LocalAddr())
	copy(buf, "XXXXXXXX")
	if got, _ := read(t, b); string(got) != "original" {
		t.Errorf("read %q, want original", got)
	}
}

func TestEmptyDatagram(t *testing.T) {
	a, b := mustPipe(t)
	if n, err := a.WriteTo(nil, b.LocalAddr()); n != 0 || err != nil {
		t.Fatalf("WriteTo(nil) = %d, %v", n, err)
	}
	if got, _ := read(t, b); len(got) != 0 {
		t.Errorf("read %q, want empty datagram", got)
	}
}

func TestShortReadTruncates(t *testing.T) {
	a, b := mustPipe(t)
	a.WriteTo([]byte("0123456789"), b.LocalAddr())
	a.WriteTo([]byte("next"), b.LocalAddr())
	buf := make([]byte, 3)
	n, _, err := b.ReadFrom(buf)
	if n != 3 || err != nil || string(buf) != "012" {
		t.Fatalf("ReadFrom into 3 bytes = %d, %v, %q; want 3, nil, 012", n, err, buf[:n])
	}
	// The rest of the datagram is gone.
	if got, _ := read(t, b); string(got) != "next" {
		t.Errorf("next read %q, want next", got)
	}
	if s := b.Stats(); s.Truncated != 1 || s.Received != 2 {
		t.Errorf("Stats = %+v, want Truncated 1, Received 2", s)
	}
}

func TestQueueFullDrops(t *testing.T) {
	n := &Network{QueueLen: 4}
	a := mustListen(t, n, "127.0.0.1:1")
	b := mustListen(t, n, "127.0.0.1:2")
	for i := range 10 {
		if _, err := a.WriteTo([]byte{byte(i)}, b.LocalAddr()); err != nil {
			t.Fatalf("WriteTo %d: %v", i, err)
		}
	}
	if s := b.Stats(); s.Dropped != 6 || s.Queued != 4 {
		t.Errorf("receiver Stats = %+v, want Dropped 6, Queued 4", s)
	}
	if s := a.Stats(); s.Sent != 10 || s.Lost != 0 {
		t.Errorf("sender Stats = %+v, want Sent 10, Lost 0", s)
	}
	for i := range 4 {
		if got, _ := read(t, b); !bytes.Equal(got, []byte{byte(i)}) {
			t.Errorf("datagram %d = %v", i, got)
		}
	}
	// Nothing else is waiting.
	b.SetReadDeadline(time.Now())
	expectTimeout(t, readErr(t, b))
}

func TestDefaultQueueLen(t *testing.T) {
	a, b := mustPipe(t)
	for range DefaultQueueLen + 1 {
		a.WriteTo([]byte("x"), b.LocalAddr())
	}
	if s := b.Stats(); s.Dropped != 1 || s.Queued != DefaultQueueLen {
		t.Errorf("Stats = %+v, want Dropped 1, Queued %d", s, DefaultQueueLen)
	}
}

func TestWriteToNobody(t *testing.T) {
	a, b := mustPipe(t)
	n, err := a.WriteTo([]byte("lost"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3})
	if n != 4 || err != nil {
		t.Fatalf("WriteTo an address nobody listens on = %d, %v; want 4, nil", n, err)
	}
	// Nor to a closed endpoint.
	dst := b.LocalAddr()
	b.Close()
	if _, err := a.WriteTo([]byte("lost"), dst); err != nil {
		t.Fatalf("WriteTo a closed endpoint: %v", err)
	}
	if s := a.Stats(); s.Lost != 2 || s.Sent != 2 {
		t.Errorf("Stats = %+v, want Lost 2, Sent 2", s)
	}
}

func TestWriteToBadAddress(t *testing.T) {
	a, _ := mustPipe(t)
	_, err := a.WriteTo([]byte("x"), &net.IPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("WriteTo *net.IPAddr: err = %v, want EINVAL", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" || oe.Net != "udp" {
		t.Errorf("WriteTo *net.IPAddr: err = %#v, want a write *net.OpError", err)
	}
	if _, err := a.WriteTo([]byte("x"), (*net.UDPAddr)(nil)); err == nil {
		t.Error("WriteTo a nil *net.UDPAddr succeeded")
	}
	if _, err := a.WriteTo([]byte("x"), nil); err == nil {
		t.Error("WriteTo a nil net.Addr succeeded")
	}
}

func TestMessageTooLarge(t *testing.T) {
	a, b := mustPipe(t)
	if _, err := a.WriteTo(make([]byte, DefaultMaxDatagram), b.LocalAddr()); err != nil {
		t.Fatalf("WriteTo %d bytes: %v", DefaultMaxDatagram, err)
	}
	_, err := a.WriteTo(make([]byte, DefaultMaxDatagram+1), b.LocalAddr())
	if !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("WriteTo %d bytes: err = %v, want EMSGSIZE", DefaultMaxDatagram+1, err)
	}
	if got, _ := read(t, b); len(got) != DefaultMaxDatagram {
		t.Errorf("read %d bytes, want %d", len(got), DefaultMaxDatagram)
	}

	n := &Network{MaxDatagram: 1200}
	c := mustListen(t, n, "127.0.0.1:1")
	if _, err := c.WriteToUDPAddrPort(make([]byte, 1201), netip.MustParseAddrPort("127.0.0.1:2")); !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("WriteToUDPAddrPort 1201 bytes with MaxDatagram 1200: err = %v, want EMSGSIZE", err)
	}
}

func TestReadDeadlinePast(t *testing.T) {
	a, b := mustPipe(t)
	a.WriteTo([]byte("waiting"), b.LocalAddr())
	b.SetReadDeadline(time.Now().Add(-time.Second))
	// A deadline in the past wins even over a waiting datagram, as with
	// UDPConn, every time.
	for range 20 {
		expectTimeout(t, readErr(t, b))
		expectTimeout(t, callErr(t, b, func() error {
			_, _, err := b.ReadFromUDPAddrPort(make([]byte, 10))
			return err
		}))
	}
	// Clearing the deadline makes the datagram readable.
	b.SetReadDeadline(time.Time{})
	if got, _ := read(t, b); string(got) != "waiting" {
		t.Errorf("read %q after clearing the deadline", got)
	}
}

func TestReadDeadlineFuture(t *testing.T) {
	_, b := mustPipe(t)
	const d = 50 * time.Millisecond
	start := time.Now()
	b.SetReadDeadline(start.Add(d))
	err := readErr(t, b)
	elapsed := time.Since(start)
	expectTimeout(t, err)
	if elapsed < d {
		t.Errorf("ReadFrom timed out after %v, before the deadline %v", elapsed, d)
	}
	if elapsed > bound {
		t.Errorf("ReadFrom timed out after %v", elapsed)
	}
	// The deadline stays passed until it is changed.
	expectTimeout(t, readErr(t, b))
}

// blockedRead starts a ReadFrom on c in a goroutine and returns the channel
// its error is sent on.
func blockedRead(c net.PacketConn) <-chan error {
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		close(started)
		_, _, err := c.ReadFrom(make([]byte, 10))
		done <- err
	}()
	<-started
	return done
}

func waitErr(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(bound):
		t.Fatalf("%s: blocked ReadFrom did not return within %v", what, bound)
		return nil
	}
}

func TestReadDeadlineChangedWhileBlocked(t *testing.T) {
	_, b := mustPipe(t)
	b.SetReadDeadline(time.Now().Add(time.Hour))
	done := blockedRead(b)
	b.SetReadDeadline(time.Now().Add(-time.Second))
	expectTimeout(t, waitErr(t, done, "deadline moved to the past"))

	// Moved from none to the near future while blocked.
	b.SetReadDeadline(time.Time{})
	done = blockedRead(b)
	b.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	expectTimeout(t, waitErr(t, done, "deadline moved to the near future"))
}

func TestReadDeadlineExtendedWhileBlocked(t *testing.T) {
	a, b := mustPipe(t)
	b.SetReadDeadline(time.Now().Add(time.Hour))
	done := blockedRead(b)
	b.SetReadDeadline(time.Time{}) // no deadline any more
	a.WriteTo([]byte("hi"), b.LocalAddr())
	if err := waitErr(t, done, "deadline cleared"); err != nil {
		t.Fatalf("ReadFrom after clearing the deadline: %v", err)
	}
}

func TestWriteDeadline(t *testing.T) {
	a, b := mustPipe(t)
	a.SetWriteDeadline(time.Now().Add(-time.Second))
	_, err := a.WriteTo([]byte("x"), b.LocalAddr())
	expectTimeout(t, err)
	_, err = a.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:2"))
	expectTimeout(t, err)
	a.SetWriteDeadline(time.Now().Add(time.Hour))
	if _, err := a.WriteTo([]byte("x"), b.LocalAddr()); err != nil {
		t.Fatalf("WriteTo with a future deadline: %v", err)
	}
	// SetDeadline sets both.
	a.SetDeadline(time.Now().Add(-time.Second))
	_, err = a.WriteTo([]byte("x"), b.LocalAddr())
	expectTimeout(t, err)
	expectTimeout(t, readErr(t, a))
	if s := b.Stats(); s.Queued != 1 {
		t.Errorf("receiver Queued = %d, want 1", s.Queued)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	_, b := mustPipe(t)
	done := blockedRead(b)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectClosed(t, "blocked ReadFrom", waitErr(t, done, "Close"))
}

func TestClosedErrors(t *testing.T) {
	a, b := mustPipe(t)
	a.WriteTo([]byte("x"), b.LocalAddr())
	if err := b.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	expectClosed(t, "second Close", b.Close())
	expectClosed(t, "ReadFrom", readErr(t, b))
	_, _, err := b.ReadFromUDPAddrPort(make([]byte, 10))
	expectClosed(t, "ReadFromUDPAddrPort", err)
	_, err = b.WriteTo([]byte("x"), a.LocalAddr())
	expectClosed(t, "WriteTo", err)
	_, err = b.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:1"))
	expectClosed(t, "WriteToUDPAddrPort", err)
	expectClosed(t, "SetDeadline", b.SetDeadline(time.Now()))
	expectClosed(t, "SetReadDeadline", b.SetReadDeadline(time.Now()))
	expectClosed(t, "SetWriteDeadline", b.SetWriteDeadline(time.Now()))
	if got := b.LocalAddr().String(); got != "127.0.0.1:2" {
		t.Errorf("LocalAddr after Close = %s", got)
	}
}

func TestConcurrent(t *testing.T) {
	const writers, each = 8, 100
	n := &Network{QueueLen: writers * each}
	dst := mustListen(t, n, "127.0.0.1:9")
	var wg sync.WaitGroup
	for w := range writers {
		c := mustListen(t, n, "127.0.0.1:0")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c.WriteTo([]byte(fmt.Sprintf("%d/%d", w, i)), dst.LocalAddr())
			}
		}()
	}
	// Read concurrently with the writes, from two goroutines.
	got := make(chan string, writers*each)
	var rg sync.WaitGroup
	for range 2 {
		rg.Add(1)
		go func() {
			defer rg.Done()
			buf := make([]byte, 100)
			for {
				n, _, err := dst.ReadFrom(buf)
				if err != nil {
					return
				}
				got <- string(buf[:n])
			}
		}()
	}
	wg.Wait()
	seen := make(map[string]bool)
	timeout := time.After(bound)
	for len(seen) < writers*each {
		select {
		case s := <-got:
			if seen[s] {
				t.Errorf("datagram %q received twice", s)
			}
			seen[s] = true
		case <-timeout:
			t.Fatalf("received %d of %d datagrams", len(seen), writers*each)
		}
	}
	dst.Close()
	rg.Wait()
	if s := dst.Stats(); s.Received != writers*each || s.Dropped != 0 {
		t.Errorf("Stats = %+v", s)
	}
}
