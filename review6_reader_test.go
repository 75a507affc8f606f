package vaultudp

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitInSocket waits until a goroutine created by the test named creator
// is blocked in a socket read inside fn (its stack names both, in IO
// wait): other tests' readers, running in parallel, do not count.
func waitInSocket(t *testing.T, fn, creator string) {
	t.Helper()
	waitStack(t, "no goroutine of "+creator+" blocked in the socket in "+fn, func(g string) bool {
		return strings.Contains(g, "[IO wait") && strings.Contains(g, fn) && strings.Contains(g, "created by") && strings.Contains(g, creator)
	})
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

// TestReview6ConnToReadPeerGoneAndRebind: a ConnTo Read in the socket
// follows a Rebind (it reads the new socket: a datagram the peer sends
// there reaches it) and ends when its peer is removed, with an error
// wrapping ErrUnknownPeer (dropPeerTableLocked interrupts it).
func TestReview6ConnToReadPeerGoneAndRebind(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	if !server.sock.Load().Caps().Deadlines {
		t.Skip("the socket's deadlines do not interrupt a read: no direct reads")
	}
	cl := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, cl, addrOf(server))
	pc, err := server.ConnTo(addrOf(cl))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	type result struct {
		s   string
		err error
	}
	got := make(chan result, 1)
	read := func() {
		pc.SetReadDeadline(time.Now().Add(waitLong))
		buf := make([]byte, 100)
		n, err := pc.Read(buf)
		got <- result{string(buf[:n]), err}
	}
	go read()
	waitInSocket(t, "readDirect", "TestReview6ConnToReadPeerGoneAndRebind")
	if err := server.Rebind("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	// The peer follows once it hears from the new port.
	if _, err := pc.Write([]byte("moved")); err != nil {
		t.Fatal(err)
	}
	expectRead(t, cl, "moved", addrOf(server))
	if _, err := cl.WriteToUDPAddrPort([]byte("to the new port"), addrOf(server)); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || r.s != "to the new port" {
		t.Fatalf("ConnTo Read across a Rebind: %q, %v", r.s, r.err)
	}

	go read()
	waitInSocket(t, "readDirect", "TestReview6ConnToReadPeerGoneAndRebind")
	start := time.Now()
	if err := server.RemovePeer(addrOf(cl)); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !errors.Is(r.err, ErrUnknownPeer) || time.Since(start) > waitLong/2 {
		t.Fatalf("ConnTo Read in the socket, its peer removed: %q, %v after %v", r.s, r.err, time.Since(start))
	}
}

// TestReview6ReadersRace: three readers of one Conn race for its socket
// under -race: a ConnTo net.Conn for peer a (short deadlines, retried),
// the Conn's ReadFrom (peers b and c), and a ConnTo net.Conn for b that
// is closed and made again and again (b's datagrams go to ReadFrom
// meanwhile). No reader gets another's datagram, none hangs, and once the
// churn stops every reader gets what is sent to it.
func TestReview6ReadersRace(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	srv := addrOf(server)
	var cls [3]*Conn
	for i := range cls {
		cls[i] = listenT(t, "udp4", "127.0.0.1:0", nil)
		handshakeT(t, cls[i], srv)
	}
	a, b, c := cls[0], cls[1], cls[2]
	pa, err := server.ConnTo(addrOf(a))
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()

	stop := make(chan struct{})
	fail := make(chan string, 16)
	var wg sync.WaitGroup
	var gotA, gotRF atomic.Int64
	wg.Add(3)
	go func() { // a's reader: short deadlines
		defer wg.Done()
		buf := make([]byte, 100)
		for !isClosed(stop) {
			pa.SetReadDeadline(time.Now().Add(time.Duration(1+gotA.Load()%5) * time.Millisecond))
			n, err := pa.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					fail <- "a's reader: " + err.Error()
					return
				}
				continue
			}
			if !strings.HasPrefix(string(buf[:n]), "a") {
				fail <- "a's reader got " + string(buf[:n])
				return
			}
			gotA.Add(1)
		}
	}()
	go func() { // the Conn's ReadFrom: b's and c's, never a's
		defer wg.Done()
		buf := make([]byte, 100)
		for !isClosed(stop) {
			server.SetReadDeadline(time.Now().Add(3 * time.Millisecond))
			n, from, err := server.ReadFromUDPAddrPort(buf)
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					fail <- "ReadFrom: " + err.Error()
					return
				}
				continue
			}
			if from == addrOf(a) || strings.HasPrefix(string(buf[:n]), "a") {
				fail <- "ReadFrom got a's " + string(buf[:n])
				return
			}
			gotRF.Add(1)
		}
	}()
	go func() { // b's net.Conn, made and closed again and again
		defer wg.Done()
		buf := make([]byte, 100)
		for !isClosed(stop) {
			pb, err := server.ConnTo(addrOf(b))
			if err != nil {
				fail <- "ConnTo b: " + err.Error()
				return
			}
			pb.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
			n, err := pb.Read(buf)
			if err == nil && !strings.HasPrefix(string(buf[:n]), "b") {
				fail <- "b's reader got " + string(buf[:n])
			}
			pb.Close()
		}
	}()
	deadline := time.Now().Add(1500 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		for _, cl := range []struct {
			c    *Conn
			name string
		}{{a, "a"}, {b, "b"}, {c, "c"}} {
			cl.c.WriteToUDPAddrPort([]byte(cl.name+strconv.Itoa(i)), srv)
		}
		if i%8 == 0 {
			time.Sleep(time.Millisecond) // paced: the point is the readers' race, not the queues
		}
	}
	close(stop)
	wg.Wait()
	close(fail)
	for f := range fail {
		t.Error(f)
	}
	t.Logf("a's reader read %d, ReadFrom %d, peerQueued %d, in a's queue %d", gotA.Load(), gotRF.Load(), server.peerQueued.Load(), len(pa.(*peerConn).q.ch))
	// Every reader still works: a's net.Conn, and ReadFrom (c's).
	pa.SetReadDeadline(time.Time{})
	for {
		server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := server.ReadFromUDPAddrPort(make([]byte, 100)); err != nil {
			break // drained
		}
	}
	for {
		pa.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := pa.Read(make([]byte, 100)); err != nil {
			break
		}
	}
	if _, err := a.WriteToUDPAddrPort([]byte("a-last"), srv); err != nil {
		t.Fatal(err)
	}
	pa.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 100)
	if n, err := pa.Read(buf); err != nil || string(buf[:n]) != "a-last" {
		t.Fatalf("a's net.Conn after the race: %q, %v", buf[:n], err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("c-last"), srv); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "c-last", addrOf(c))
	// Every packet counted in the ConnTo queues' shared budget is in a
	// queue that is read: none is left counted in a closed net.Conn's.
	if _, ok := waitFor(time.Second, func() bool { return server.peerQueued.Load() == int64(len(pa.(*peerConn).q.ch)) }); !ok {
		t.Errorf("peerQueued %d, but %d wait in the open net.Conn's queue: the budget leaked", server.peerQueued.Load(), len(pa.(*peerConn).q.ch))
	}
}

// TestReview6ConnToCloseBudget: a ConnTo net.Conn closed while the
// socket's reader delivers its peer's datagrams: what the reader queued
// after Close emptied the queue must not stay counted in the budget the
// ConnTo queues share (Config.ReadQueue, toPeerQueue), or each such race
// shrinks it for good, until no net.Conn of the Conn gets a datagram
// (Drops.QueueFull): a Listener whose clients come and go would starve.
func TestReview6ConnToCloseBudget(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	srv := addrOf(server)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, b, srv)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the Conn's reader, in the socket
		defer wg.Done()
		buf := make([]byte, 100)
		for !isClosed(stop) {
			server.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			server.ReadFromUDPAddrPort(buf)
		}
	}()
	go func() { // b sends on and on
		defer wg.Done()
		for i := 0; !isClosed(stop); i++ {
			b.WriteToUDPAddrPort([]byte("b"+strconv.Itoa(i)), srv)
			if i%16 == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	deadline := time.Now().Add(500 * time.Millisecond) // thousands of races: the whole budget leaked, before
	n := 0
	for ; time.Now().Before(deadline); n++ {
		pb, err := server.ConnTo(addrOf(b))
		if err != nil {
			t.Fatal(err)
		}
		pb.Close()
	}
	close(stop)
	wg.Wait()
	if _, ok := waitFor(time.Second, func() bool { return server.peerQueued.Load() == 0 }); !ok {
		t.Errorf("after %d ConnTo/Close: %d packets stay counted in the ConnTo queues' budget, none of them readable", n, server.peerQueued.Load())
	}
}
