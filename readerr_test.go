package vaultudp

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/udpio"
)

// failingConn is a PacketConn over a loopback socket whose reads fail with
// err: all of them (fail < 0), or the first fail ones and none after.
// It is no *net.UDPConn, so the Conn's background reader reads it and
// queues for ReadFrom.
type failingConn struct {
	*net.UDPConn
	err   error
	fail  int64
	reads atomic.Int64
}

func (f *failingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if k := f.reads.Add(1); f.fail < 0 || k <= f.fail {
		return 0, nil, f.err
	}
	return f.UDPConn.ReadFrom(b)
}

// errNotImplemented is the error golang.org/x/net's ReadBatch returns on
// Windows, where its recvmsg is not implemented: what the Conn's reads
// returned there on every call before udpio's portable path.
var errNotImplemented = errors.New("not implemented on " + runtime.GOOS + "/" + runtime.GOARCH)

// wrapFailing wraps a failing PacketConn and returns the Conn and a
// loopback Conn that can send to it.
func wrapFailing(t *testing.T, f *failingConn) (*Conn, *Conn) {
	t.Helper()
	c, err := Wrap(f, &Config{})
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, c)
	return c, listenT(t, "udp4", "127.0.0.1:0", &Config{})
}

// A socket whose every read fails (x/net's ReadBatch on Windows did):
// ReadFrom returns the error, shaped as *net.UDPConn's, within a bounded
// time, and the reader backs off instead of spinning: in a second of
// ReadFrom calls that each return the error, the socket is read a few
// dozen times at most, where the loop before read it millions of times.
func TestReadErrorPersistentSurfaces(t *testing.T) {
	parallel(t)
	f := &failingConn{UDPConn: rawUDP(t), err: &net.OpError{Op: "read", Net: "udp", Err: errNotImplemented}, fail: -1}
	c, _ := wrapFailing(t, f)
	cpu0, cpuOK := processCPU()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 2048)
	_, _, err := c.ReadFrom(buf)
	first := time.Since(start)
	var oe *net.OpError
	if !errors.Is(err, errNotImplemented) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("ReadFrom = %v, want the socket's error as a read *net.OpError", err)
	}
	if first > time.Second {
		t.Fatalf("ReadFrom returned the error after %v", first)
	}
	// The application reads on, as a server loop that logs errors does.
	calls := 0
	for time.Since(start) < time.Second {
		if _, _, err := c.ReadFrom(buf); !errors.Is(err, errNotImplemented) {
			t.Fatalf("ReadFrom %d = %v, want the socket's error again", calls, err)
		}
		calls++
	}
	elapsed := time.Since(start)
	reads := f.reads.Load()
	cpu1, _ := processCPU()
	if cpuOK {
		t.Logf("first error after %v; in %v: %d ReadFrom errors, %d socket reads, %v CPU", first, elapsed.Round(time.Millisecond), calls+1, reads, (cpu1 - cpu0).Round(time.Millisecond))
	} else {
		t.Logf("first error after %v; in %v: %d ReadFrom errors, %d socket reads", first, elapsed.Round(time.Millisecond), calls+1, reads)
	}
	// Waits of 0, 1, 2, 4, ... 64 ms (8 reads in 127 ms), then of
	// readBackoffMax: about 18 reads in a second, a few more for the
	// reads before start.
	if maxReads := int64(elapsed/readBackoffMax) + 15; reads > maxReads {
		t.Errorf("%d socket reads in %v, want at most %d (backed off)", reads, elapsed, maxReads)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadFrom(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadFrom after Close = %v, want net.ErrClosed", err)
	}
}

// transientErr returns a read error this system's sockets recover from
// (udpio.Transient): ECONNREFUSED on Unix, WSAECONNRESET on Windows.
func transientErr(t *testing.T) error {
	for _, errno := range []syscall.Errno{syscall.ECONNREFUSED, syscall.Errno(10054)} {
		err := &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("recvfrom", errno)}
		if udpio.Transient(err) {
			return err
		}
	}
	t.Skip("no transient read error known here")
	return nil
}

// A socket whose reads fail for a while: delivery resumes. Transient
// errors (an ICMP report of an earlier send) never reach ReadFrom; other
// errors do, as they would from a *net.UDPConn, and once the socket reads
// again the datagrams come, with no stale error in between.
func TestReadErrorTransientResumes(t *testing.T) {
	parallel(t)
	for _, tc := range []struct {
		name       string
		err        error
		wantErrors bool
	}{
		{"transient", transientErr(t), false},
		{"other", &net.OpError{Op: "read", Net: "udp", Err: errNotImplemented}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const fail = 10 // in a row: about 0.3 s of backing off
			f := &failingConn{UDPConn: rawUDP(t), err: tc.err, fail: fail}
			c, sender := wrapFailing(t, f)
			dst := f.LocalAddr().(*net.UDPAddr).AddrPort()
			start := time.Now()
			errs := 0
			buf := make([]byte, 2048)
			c.SetReadDeadline(time.Now().Add(waitLong))
			// Sent at once: it waits (the handshake's messages too) in
			// the socket until the reader's failures end.
			if _, err := sender.WriteToUDPAddrPort([]byte("hello"), dst); err != nil {
				t.Fatal(err)
			}
			for {
				n, _, err := c.ReadFromUDPAddrPort(buf)
				if err == nil {
					if string(buf[:n]) != "hello" {
						t.Fatalf("read %q", buf[:n])
					}
					break
				}
				if !errors.Is(err, tc.err) || !tc.wantErrors || errs > fail {
					t.Fatalf("ReadFrom after %d reads (%d errors returned) = %v", f.reads.Load(), errs, err)
				}
				errs++
			}
			t.Logf("delivery after %v, %d socket reads (%d failed), %d errors returned", time.Since(start).Round(time.Millisecond), f.reads.Load(), fail, errs)
			if f.reads.Load() <= fail {
				t.Fatalf("delivered after %d reads, fewer than the %d that fail", f.reads.Load(), fail)
			}
			if tc.wantErrors && errs == 0 {
				t.Error("no error reached ReadFrom")
			}
			// Delivery goes on, with nothing stale in between.
			for i := 0; i < 20; i++ {
				if _, err := sender.WriteToUDPAddrPort([]byte("again"), dst); err != nil {
					t.Fatal(err)
				}
				expectRead(t, c, "again", addrOf(sender))
			}
		})
	}
}
