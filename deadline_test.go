package vaultudp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

type readResult struct {
	n    int
	addr net.Addr
	err  error
	at   time.Time
}

// blockedRead starts a ReadFrom on c and waits until it is blocked.
func blockedRead(t *testing.T, c *Conn) <-chan readResult {
	t.Helper()
	ch := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 2048)
		n, addr, err := c.ReadFrom(buf)
		ch <- readResult{n, addr, err, time.Now()}
	}()
	waitBlockedIn(t, "(*Conn).ReadFromUDPAddrPort")
	return ch
}

func resultWithin(t *testing.T, ch <-chan readResult, d time.Duration) readResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("blocked ReadFrom did not return within %v", d)
		return readResult{}
	}
}

func checkTimeout(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: %v, want os.ErrDeadlineExceeded", what, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s: %v is not a net.Error with Timeout()", what, err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("%s: %v is not a *net.OpError", what, err)
	}
}

func TestReadDeadline(t *testing.T) {
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	buf := make([]byte, 64)

	t.Run("past", func(t *testing.T) {
		a.SetReadDeadline(time.Now().Add(-time.Second))
		defer a.SetReadDeadline(time.Time{})
		start := time.Now()
		_, addr, err := a.ReadFrom(buf)
		checkTimeout(t, "ReadFrom with a past deadline", err)
		if addr != nil {
			t.Errorf("address %v with an error", addr)
		}
		_, _, err = a.ReadFromUDPAddrPort(buf)
		checkTimeout(t, "ReadFromUDPAddrPort with a past deadline", err)
		if d := time.Since(start); d > time.Second {
			t.Errorf("reads with a past deadline took %v", d)
		}
	})

	t.Run("expires while blocked", func(t *testing.T) {
		a.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		defer a.SetReadDeadline(time.Time{})
		start := time.Now()
		_, _, err := a.ReadFrom(buf)
		checkTimeout(t, "ReadFrom past its deadline", err)
		if d := time.Since(start); d < 90*time.Millisecond || d > waitLong {
			t.Errorf("returned after %v, deadline 100ms", d)
		}
	})

	t.Run("set from another goroutine", func(t *testing.T) {
		for _, set := range []struct {
			name string
			f    func(time.Time) error
		}{{"SetReadDeadline", a.SetReadDeadline}, {"SetDeadline", a.SetDeadline}} {
			ch := blockedRead(t, a) // no deadline: it would wait forever
			start := time.Now()
			if err := set.f(time.Now()); err != nil {
				t.Fatal(err)
			}
			r := resultWithin(t, ch, waitLong)
			checkTimeout(t, "ReadFrom woken by "+set.name, r.err)
			if d := r.at.Sub(start); d > time.Second {
				t.Errorf("%s woke ReadFrom after %v", set.name, d)
			}
			a.SetDeadline(time.Time{})
		}
	})

	t.Run("shortened while blocked", func(t *testing.T) {
		a.SetReadDeadline(time.Now().Add(time.Hour))
		defer a.SetReadDeadline(time.Time{})
		ch := blockedRead(t, a)
		a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		checkTimeout(t, "ReadFrom with a shortened deadline", resultWithin(t, ch, waitLong).err)
	})

	t.Run("extended while blocked", func(t *testing.T) {
		a.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		defer a.SetReadDeadline(time.Time{})
		ch := blockedRead(t, a)
		a.SetReadDeadline(time.Now().Add(time.Hour))
		// The first deadline has passed and ReadFrom still waits: data
		// wakes it.
		if _, err := b.WriteToUDPAddrPort([]byte("later"), addrOf(a)); err != nil {
			t.Fatal(err)
		}
		r := resultWithin(t, ch, waitLong)
		if r.err != nil || r.n != 5 {
			t.Fatalf("ReadFrom after the deadline was extended: %d, %v", r.n, r.err)
		}
	})

	t.Run("cleared", func(t *testing.T) {
		a.SetReadDeadline(time.Now().Add(-time.Second))
		_, _, err := a.ReadFrom(buf)
		checkTimeout(t, "ReadFrom with a past deadline", err)
		if err := a.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		ch := blockedRead(t, a) // blocks: the deadline is gone
		if _, err := b.WriteToUDPAddrPort([]byte("data"), addrOf(a)); err != nil {
			t.Fatal(err)
		}
		r := resultWithin(t, ch, waitLong)
		if r.err != nil || r.n != 4 || r.addr.String() != addrOf(b).String() {
			t.Fatalf("ReadFrom after clearing the deadline: %d, %v, %v", r.n, r.addr, r.err)
		}
		if _, ok := r.addr.(*net.UDPAddr); !ok {
			t.Fatalf("source is a %T", r.addr)
		}
	})

	t.Run("timeout keeps queued data", func(t *testing.T) {
		a.SetReadDeadline(time.Now().Add(-time.Second))
		_, _, err := a.ReadFrom(buf)
		checkTimeout(t, "ReadFrom", err)
		a.SetReadDeadline(time.Time{})
		if _, err := b.WriteToUDPAddrPort([]byte("kept"), addrOf(a)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, a, "kept", addrOf(b))
	})
}

func TestWriteDeadline(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	for _, set := range []struct {
		name string
		f    func(time.Time) error
	}{{"SetWriteDeadline", a.SetWriteDeadline}, {"SetDeadline", a.SetDeadline}} {
		if err := set.f(time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := a.WriteToUDPAddrPort([]byte("late"), addrOf(b))
		checkTimeout(t, "write after "+set.name+" in the past", err)
		if n != 0 {
			t.Errorf("wrote %d bytes", n)
		}
		_, err = a.WriteTo([]byte("late"), net.UDPAddrFromAddrPort(addrOf(b)))
		checkTimeout(t, "WriteTo after "+set.name+" in the past", err)
		if _, err := a.Broadcast([]byte("late")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Broadcast after %s in the past: %v", set.name, err)
		}
		// A deadline in the future lets writes through.
		set.f(time.Now().Add(time.Hour))
		if _, err := a.WriteToUDPAddrPort([]byte("in time"), addrOf(b)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, b, "in time", addrOf(a))
		set.f(time.Time{})
		if _, err := a.WriteToUDPAddrPort([]byte("cleared"), addrOf(b)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, b, "cleared", addrOf(a))
	}
	// Nothing written past the deadline was sent.
	if s := b.Stats(); s.DatagramsIn != 4 {
		t.Errorf("b received %d datagrams, want 4", s.DatagramsIn)
	}
}

// blockedConnGoroutines lists the goroutines parked inside c's own loops
// (reader, housekeeping), found by the receiver in their stack traces.
// Once Close has returned there must be none: a loop still waiting would
// be one Close did not wait for. (A goroutine that is runnable may be
// past its deferred WaitGroup.Done, on its way out: goleak's retries see
// to those.)
func blockedConnGoroutines(c *Conn) []string {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	recv := fmt.Sprintf("(%p", c)
	var out []string
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[runnable") || strings.Contains(header, "[running") {
			continue
		}
		if strings.Contains(g, "(*Conn).readLoop"+recv) || strings.Contains(g, "(*Conn).housekeeping"+recv) {
			out = append(out, g)
		}
	}
	return out
}

func TestClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, err := Listen("udp4", "127.0.0.1:0", &Config{HandshakeTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close() // if the test fails early; deferred before VerifyNone runs
	b, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := a.WriteToUDPAddrPort([]byte("hi"), addrOf(b)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "hi", addrOf(a))
	if err := a.Rebind("127.0.0.1:0"); err != nil { // a second reader, and the old one ended
		t.Fatal(err)
	}

	// Blocked calls: a read, and a handshake with nobody (it would wait
	// an hour).
	reads := blockedRead(t, a)
	dead := deadPort(t, "udp4", "127.0.0.1")
	hs := make(chan error, 1)
	go func() { hs <- a.Handshake(context.Background(), dead) }()
	waitBlockedIn(t, "(*Conn).Handshake")

	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if gs := blockedConnGoroutines(a); len(gs) > 0 {
		t.Fatalf("Conn goroutines still waiting after Close returned:\n%s", strings.Join(gs, "\n\n"))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if r := resultWithin(t, reads, waitLong); !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("blocked ReadFrom after Close: %v, want net.ErrClosed", r.err)
	}
	select {
	case err := <-hs:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Handshake after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLong):
		t.Fatal("blocked Handshake did not return after Close")
	}

	buf := make([]byte, 64)
	_, _, err = a.ReadFrom(buf)
	calls := map[string]error{"ReadFrom": err}
	_, _, calls["ReadFromUDPAddrPort"] = a.ReadFromUDPAddrPort(buf)
	_, calls["WriteTo"] = a.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(addrOf(b)))
	_, calls["WriteToUDPAddrPort"] = a.WriteToUDPAddrPort([]byte("x"), addrOf(b))
	_, calls["Broadcast"] = a.Broadcast([]byte("x"))
	calls["SetDeadline"] = a.SetDeadline(time.Now())
	calls["SetReadDeadline"] = a.SetReadDeadline(time.Now())
	calls["SetWriteDeadline"] = a.SetWriteDeadline(time.Now())
	calls["AddPeer"] = a.AddPeer(PeerConfig{Addr: dead})
	calls["Handshake"] = a.Handshake(context.Background(), addrOf(b))
	calls["Rebind"] = a.Rebind("127.0.0.1:0")
	calls["second Close"] = a.Close()
	for name, err := range calls {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after Close: %v, want an error wrapping net.ErrClosed", name, err)
		}
	}
	// Broadcast fails also when there is no peer to fail.
	lone, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	lone.Close()
	if _, err := lone.Broadcast([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Broadcast with no peers after Close: %v, want net.ErrClosed", err)
	}
	// Stats and the accessors still answer.
	_ = a.Stats()
	_ = a.Peers()
	_ = a.LocalAddr()
}

// TestCloseConcurrent: Close from many goroutines at once, with reads and
// writes in flight, neither panics nor hangs.
func TestCloseConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for range 1_000_000 {
			if _, _, err := a.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range 1_000_000 {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := b.WriteToUDPAddrPort([]byte("flood"), addrOf(a)); err != nil {
				return
			}
		}
	}()
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- a.Close()
		}()
	}
	done := make(chan struct{})
	go func() {
		// The flood stops when a's reader has seen Close.
		defer close(done)
		for range 8 {
			<-errs
		}
		close(stop)
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatal("concurrent Close hung")
	}
	b.Close()
}
