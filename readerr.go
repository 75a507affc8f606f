package vaultudp

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/vaultudp/vaultudp/internal/udpio"
)

// Read errors of the socket. A read that fails with neither a close nor a
// deadline is one of two kinds (udpio.Transient):
//
//   - transient: an ICMP error that an earlier send drew, reported on
//     this read (WSAECONNRESET on Windows, ECONNREFUSED on a connected
//     Unix socket), or the system short of buffers. It is about one peer
//     or one moment, not the socket: the reader reads on, and ReadFrom
//     never sees it.
//   - anything else: the socket fails (a PacketConn that cannot read, a
//     socket the system broke). ReadFrom returns it, as *net.UDPConn
//     returns its read errors: a goroutine in ReadFrom that read it
//     returns it at once (reader.go), and one waiting for the background
//     reader gets it from c.readErr.
//
// Either way, errors that come in a row are backed off (readBackoff), so
// that a socket that fails at once on every read does not spin a core:
// the first error is read past at once, the next after 1 ms, doubling to
// readBackoffMax. A read that succeeds ends the run.

// readBackoffMax is the longest a reader waits between failing reads:
// how soon it reads again, at worst, once the socket recovers.
const readBackoffMax = 100 * time.Millisecond

// readBackoff counts a reader's failed reads in a row.
type readBackoff struct {
	fails  int
	posted bool // an error of this run went to c.readErr
}

// next returns how long to wait before the next read, one more having
// failed.
func (b *readBackoff) next() time.Duration {
	b.fails++
	if b.fails == 1 {
		return 0
	}
	return min(time.Millisecond<<min(b.fails-2, 16), readBackoffMax)
}

// readError is err, a failed read of the socket, as ReadFrom returns it:
// the *net.OpError the socket made (a *net.UDPConn's is already shaped
// so), or one made as a *net.UDPConn would.
func (c *Conn) readError(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe
	}
	return c.opError("read", nil, err)
}

// bgReadFailed handles a failed read of the background reader: an error
// that is not transient goes to ReadFrom, and the reader waits as b says
// (with t, its timer). It returns false if the Conn closed meanwhile.
func (c *Conn) bgReadFailed(err error, b *readBackoff, t *time.Timer) bool {
	if !udpio.Transient(err) && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The newest error replaces one ReadFrom has not taken yet.
		select {
		case <-c.readErr:
		default:
		}
		select {
		case c.readErr <- c.readError(err):
			b.posted = true
		default:
		}
	}
	d := b.next()
	if d == 0 {
		return true
	}
	t.Reset(d)
	select {
	case <-t.C:
		return true
	case <-c.closed:
		t.Stop()
		return false
	}
}

// bgReadSucceeded ends a run of failed reads of the background reader:
// an error it left for ReadFrom and not yet taken is stale now, and goes.
func (c *Conn) bgReadSucceeded(b *readBackoff) {
	if b.posted {
		select {
		case <-c.readErr:
		default:
		}
	}
	*b = readBackoff{}
}

// directReadFailed handles a failed read of r, an application reader
// (readOnce) that is neither a close nor a deadline: it returns the error
// for ReadFrom to return, or nil when the error is transient, after
// waiting as b says (less if the Conn or r closes or r's read deadline
// passes, which the caller checks next).
func (c *Conn) directReadFailed(err error, b *readBackoff, r *appReader) error {
	if !udpio.Transient(err) {
		return c.readError(err)
	}
	if d := b.next(); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.closed:
		case <-r.closed:
		case <-r.deadline.wait():
		}
	}
	return nil
}
