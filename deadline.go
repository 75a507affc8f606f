package vaultudp

import (
	"net"
	"sync"
	"time"
)

// deadline is a settable deadline, as net.Pipe implements them: wait
// returns a channel that is closed once the deadline has passed. Setting
// a new deadline while a call waits takes effect at once, and setting one
// allocates nothing in steady state (consumers such as miekg/dns set a
// read deadline before every read): one timer serves every deadline, moved
// with Reset, and the channel is replaced only after it was closed.
type deadline struct {
	// mu guards the fields below; the timer's function takes it too.
	mu      sync.Mutex
	timer   *time.Timer   // runs expire; made by the first deadline in the future
	cancel  chan struct{} // closed when the deadline passes
	t       time.Time     // the deadline; zero for none
	stopped bool          // stop was called: the timer is never armed again
}

func newDeadline() *deadline {
	return &deadline{cancel: make(chan struct{})}
}

// set arms the deadline for t; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.t = t
	if d.timer != nil {
		// If the timer has fired already, expire is waiting for mu or
		// about to: it finds the new deadline and acts on that one.
		d.timer.Stop()
	}
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		if !closed {
			close(d.cancel)
		}
		return
	}
	if closed {
		d.cancel = make(chan struct{})
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(dur, d.expire)
	} else {
		d.timer.Reset(dur)
	}
}

// expire is the timer's function: it closes the channel if the deadline
// it finds has passed. A firing for a deadline moved since then finds
// the deadline cleared (nothing to do) or in the future (the timer is
// armed for it again: set has done so, or the wall clock moved under a
// deadline without a monotonic reading).
func (d *deadline) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped || d.t.IsZero() {
		return
	}
	if dur := time.Until(d.t); dur > 0 {
		d.timer.Reset(dur)
		return
	}
	if !isClosed(d.cancel) {
		close(d.cancel)
	}
}

// wait returns a channel closed when the deadline has passed.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

// time returns the deadline; the zero time means none.
func (d *deadline) time() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t
}

// stop releases the timer for good.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	if d.timer != nil {
		d.timer.Stop()
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for ReadFrom and ReadBatch; a blocked
// call sees a change at once.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if !c.ok() {
		return errZeroConn("set")
	}
	if c.isClosed() {
		return c.opError("set", nil, net.ErrClosed)
	}
	c.setReadDeadline(c.readDeadline, t)
	return nil
}

// SetWriteDeadline sets the deadline for writes. UDP writes do not wait
// for the network: a write fails if the deadline has passed when it
// starts, or while it waits for room in the send queue, as a UDP write
// waits for room in a full socket send buffer (a writer streaming faster
// than the socket sends; see WriteTo). The handshake traffic the Conn
// sends by itself is not subject to it.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if !c.ok() {
		return errZeroConn("set")
	}
	if c.isClosed() {
		return c.opError("set", nil, net.ErrClosed)
	}
	c.writeDeadline.set(t)
	return nil
}
