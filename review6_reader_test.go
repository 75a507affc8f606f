package vaultudp

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// waitInSocket waits until a goroutine created by the test named creator
// is blocked in a socket read inside fn (its stack names both, in IO
// wait): other tests' readers, running in parallel, do not count.
func waitInSocket(t *testing.T, fn, creator string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	timeout := time.After(waitLong)
	for {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "[IO wait") && strings.Contains(g, fn) && strings.Contains(g, "created by") && strings.Contains(g, creator) {
				return
			}
		}
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("no goroutine of %s blocked in the socket in %s", creator, fn)
		}
	}
}

// TestReview6ListenerDeliverWakesDirectReader: a peer's datagram that was
// queued for the Conn before its net.Conn took over is handed to that
// net.Conn by Listener.Accept (listener.go, "A net.Conn reads the peer
// already"). Since 5c54aa5 the net.Conn's Read may be the goroutine in
// the socket, waiting for its own queue: Accept, which took the datagram
// from the Conn's queue meanwhile, must wake it, as every other hand-off
// to a reader in the socket does (kickDirectReader); otherwise the
// datagram waits for the peer's next one, or the Read's deadline.
//
// It happens with any client that sends two datagrams back to back to a
// Listener: both are read at once and queued for the Conn, the first
// makes the net.Conn, whose second Read goes into the socket while the
// second datagram waits in the Conn's queue for Accept.
func TestReview6ListenerDeliverWakesDirectReader(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	if !server.sock.Load().Caps().Deadlines {
		t.Skip("the socket's deadlines do not interrupt a read: no direct reads")
	}
	srv := addrOf(server)
	cl := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, cl, srv)

	// The datagram waits in the Conn's queue: no net.Conn reads the peer.
	if _, err := cl.WriteToUDPAddrPort([]byte("d1"), srv); err != nil {
		t.Fatal(err)
	}
	if took, ok := waitFor(waitLong, func() bool { return len(server.recvQ) == 1 }); !ok {
		t.Fatalf("the datagram was not queued for the Conn after %v: %+v", took, server.Stats())
	}
	pc, err := server.ConnTo(addrOf(cl))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()

	const patience = 3 * time.Second
	got := make(chan string, 1)
	go func() {
		pc.SetReadDeadline(time.Now().Add(patience))
		buf := make([]byte, 100)
		n, err := pc.Read(buf)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	waitInSocket(t, "readDirect", "TestReview6ListenerDeliverWakesDirectReader")

	l := NewListener(server)
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept() // takes d1 from the Conn's queue, gives it to pc, waits on
		accepted <- err
	}()
	start := time.Now()
	s := <-got
	if s != "d1" {
		t.Fatalf("the net.Conn's Read in the socket, its datagram handed over by Accept: %q after %v (want d1 at once)", s, time.Since(start))
	}
	if took := time.Since(start); took > patience/2 {
		t.Errorf("the datagram handed over by Accept reached the Read after %v", took)
	}
	server.Close()
	if err := <-accepted; !errors.Is(err, ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

// TestReview6ConnToReadDeadlineErr: a ConnTo Read in the socket ends at
// its own deadline with the error shape of a *net.UDPConn (a
// *net.OpError wrapping os.ErrDeadlineExceeded, Timeout true), and at its
// Close with one wrapping net.ErrClosed, as before 5c54aa5.
func TestReview6ConnToReadErrors(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	if !server.sock.Load().Caps().Deadlines {
		t.Skip("the socket's deadlines do not interrupt a read: no direct reads")
	}
	srv := addrOf(server)
	cl := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, cl, srv)
	pc, err := server.ConnTo(addrOf(cl))
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() {
		pc.SetReadDeadline(time.Now().Add(waitLong))
		_, err := pc.Read(make([]byte, 10))
		errs <- err
	}()
	waitInSocket(t, "readDirect", "TestReview6ConnToReadErrors")
	pc.SetReadDeadline(time.Now().Add(-time.Second))
	err = <-errs
	var ne interface{ Timeout() bool }
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %#v", err)
	}
	pc.SetReadDeadline(time.Time{})
	go func() {
		_, err := pc.Read(make([]byte, 10))
		errs <- err
	}()
	waitInSocket(t, "readDirect", "TestReview6ConnToReadErrors")
	pc.Close()
	if err := <-errs; !errors.Is(err, ErrClosed) {
		t.Fatalf("Read at its Close: %v", err)
	}
	// The Conn still reads: the closed net.Conn's reader left the socket.
	if _, err := cl.WriteToUDPAddrPort([]byte("after"), srv); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "after", addrOf(cl))
}
