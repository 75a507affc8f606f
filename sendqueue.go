package vaultudp

import (
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The send queue: corking for a writer that outruns the socket, as Linux
// TCP's autocorking and quic-go's send queue do.
//
// A sealed datagram that finds nothing waiting is sent at once, on the
// writer's goroutine, as a *net.UDPConn sends it: a lone datagram (a
// request, an answer, a round trip) waits for nothing. A writer that comes
// back sooner than its last system call took is streaming; its datagrams
// are then queued, and one goroutine of the Conn sends what has gathered
// while it was in its previous system call, datagrams to one address of
// one size in one call (a GSO train, where the socket has UDP GSO). The
// writer seals the next datagram meanwhile, so the two overlap, and the
// system calls per datagram fall with the rate. Datagrams leave in the
// order they were written; once the queue is empty, writes go straight to
// the socket again. Only a socket with UDP GSO queues: without it, a
// queued datagram would cost a system call of its own all the same.
//
// The queue is bounded (sendQueueBytes): a writer that fills it waits, as
// on a socket whose send buffer is full, until its write deadline or
// Close. A queued datagram that the socket refuses is counted
// (Drops.SendFailed) and logged, as the error of a write that already
// returned cannot be.

// sendQueueBytes bounds the bytes waiting in the send queue: a few GSO
// trains.
const sendQueueBytes = 256 << 10

// A train is datagrams of one size (the last may be shorter) to one
// address, back to back in buf.
type train struct {
	buf  []byte
	size int
	to   netip.AddrPort
	src  netip.Addr
}

// fits reports whether a datagram of n bytes to to from src may follow
// the train: all but the last of a GSO train have its size.
func (t *train) fits(n int, to netip.AddrPort, src netip.Addr) bool {
	return t.to == to && t.src == src && n <= t.size && len(t.buf)%t.size == 0 && len(t.buf)+n <= maxTrainBytes
}

type sendQueue struct {
	// The streaming test, read by every write without a lock. sending is
	// set while trains wait or the sender goroutine works (written under
	// mu): writes then queue behind them, so that none overtakes. The
	// rest is a heuristic that two writers may race on harmlessly: when
	// the last write ended (nanoseconds of the Conn's clock, estimated
	// for a direct send) and how long a direct send takes (a moving
	// average of one send in sendSample). A writer that comes back within
	// half of that is streaming.
	sending  atomic.Bool
	lastEnd  atomic.Int64
	sendCost atomic.Int64
	sends    atomic.Uint32

	// Written by writers, read by the sender goroutine; under mu.
	mu      sync.Mutex
	trains  []*train      // waiting, oldest first
	bytes   int           // in trains
	started bool          // the sender goroutine was started
	closed  bool          // Close has begun: no sender goroutine starts
	space   chan struct{} // closed and replaced when trains went out, if writers wait for room
	waiters int
	free    []*train

	wake chan struct{} // to the sender goroutine: trains are waiting
	done chan struct{} // closed when the sender goroutine has ended

	// beforeSend, if set (by tests, under mu), runs before each train
	// is sent; an error replaces the send's.
	beforeSend func() error
}

func newSendQueue() *sendQueue {
	return &sendQueue{space: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// stop lets the sender goroutine, if any, send what waits and end, and
// waits for it; Close calls it before it closes the socket.
func (q *sendQueue) stop() {
	q.mu.Lock()
	q.closed = true
	started := q.started
	q.mu.Unlock()
	if started {
		<-q.done
	}
}

// transmit sends the sealed datagram b to to, from src (see
// udpio.Socket.WriteTo): at once, or through the send queue when the
// writer is streaming. b is the caller's again when it returns.
func (c *Conn) transmit(b []byte, to netip.AddrPort, src netip.Addr) error {
	q := c.sq
	sock := c.sock.Load()
	now := int64(time.Since(c.start)) // the one clock reading of a write
	cost := q.sendCost.Load()
	// Without GSO a queued datagram would cost a system call of its own
	// all the same: nothing to gain.
	if !q.sending.Load() && (now-q.lastEnd.Load() >= cost/2 || !sock.Caps().GSO) {
		err := sock.WriteTo(b, to, src)
		if q.sends.Add(1)%sendSample == 0 {
			// A send the scheduler interrupted says nothing of the
			// cost of the next: samples are capped.
			cost += (min(int64(time.Since(c.start))-now, int64(maxSendCost)) - cost) / 8
			q.sendCost.Store(cost)
		}
		q.lastEnd.Store(now + cost)
		return err
	}
	q.mu.Lock()
	for q.bytes+len(b) > sendQueueBytes && q.bytes > 0 {
		ch := q.space
		q.waiters++
		q.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-c.closed:
			err = ErrClosed
		case <-c.writeDeadline.wait():
			err = os.ErrDeadlineExceeded
		}
		q.mu.Lock()
		q.waiters--
		if err != nil {
			q.mu.Unlock()
			return err
		}
	}
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	q.add(b, to, src)
	if !q.sending.Load() {
		q.sending.Store(true)
		if !q.started {
			q.started = true
			go c.sendLoop()
		}
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	q.lastEnd.Store(now)
	q.mu.Unlock()
	return nil
}

// add appends b to the last train if it fits there, or starts a train;
// q.mu is held.
func (q *sendQueue) add(b []byte, to netip.AddrPort, src netip.Addr) {
	if n := len(q.trains); n > 0 {
		if t := q.trains[n-1]; t.fits(len(b), to, src) {
			t.buf = append(t.buf, b...)
			q.bytes += len(b)
			return
		}
	}
	var t *train
	if n := len(q.free); n > 0 {
		t, q.free = q.free[n-1], q.free[:n-1]
	} else {
		t = &train{buf: make([]byte, 0, maxTrainBytes)}
	}
	t.buf = append(t.buf[:0], b...)
	t.size, t.to, t.src = len(b), to, src
	q.trains = append(q.trains, t)
	q.bytes += len(b)
}

// maxSendCost caps a direct send's duration in the moving average, of
// which one send in sendSample is a sample: timing every send would cost
// a second clock reading per datagram.
const (
	maxSendCost = 20 * time.Microsecond
	sendSample  = 8
)

// maxTrainBytes is the most one train holds: what one GSO send takes.
const maxTrainBytes = 65000

// sendLoop sends the trains writers queue, until Close; it sends what
// waits when Close comes before it ends, as a socket sends what a write
// that returned gave it.
func (c *Conn) sendLoop() {
	q := c.sq
	defer close(q.done)
	var batch []*train
	for {
		select {
		case <-q.wake:
		case <-c.closed:
		}
		for {
			q.mu.Lock()
			batch = append(batch[:0], q.trains...)
			clear(q.trains)
			q.trains = q.trains[:0]
			if len(batch) == 0 {
				q.sending.Store(false)
				q.mu.Unlock()
				break
			}
			hook := q.beforeSend
			q.mu.Unlock()
			s := c.sock.Load()
			n := 0
			for _, t := range batch {
				var err error
				sent := 0
				if hook != nil {
					err = hook()
				}
				if err == nil {
					sent, err = s.WriteSegments(t.buf, t.size, t.to, t.src)
				}
				if err != nil {
					c.stats.sendFailed.Add(uint64((len(t.buf)+t.size-1)/t.size - sent))
					c.log.Debug("vaultudp: sending queued datagrams", "peer", t.to, "err", err)
				}
				n += len(t.buf)
			}
			q.mu.Lock()
			q.bytes -= n
			q.free = append(q.free, batch...)
			if q.waiters > 0 {
				close(q.space)
				q.space = make(chan struct{})
			}
			q.mu.Unlock()
			clear(batch)
		}
		select {
		case <-c.closed:
			q.mu.Lock()
			q.closed = true // no writer adds to the queue from now on
			empty := len(q.trains) == 0
			q.mu.Unlock()
			if empty {
				return
			}
		default:
		}
	}
}
