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
// The queue is bounded in the memory it holds (sendQueueBytes: the
// capacity of the waiting trains, which start small and grow with what
// they carry; a few spent trains are kept for reuse, no more): a writer
// that fills it waits, as on a socket whose send buffer is full, until its
// write deadline or Close. WriteBatch's trains go the same way (transmitTrain):
// straight to the socket when nothing waits, behind what waits otherwise. A queued datagram that the socket refuses is counted
// (Drops.SendFailed) and logged, as the error of a write that already
// returned cannot be.

// sendQueueBytes bounds the memory of the trains waiting in the send
// queue: a few GSO trains. A write may pass it by one train's growth.
const sendQueueBytes = 256 << 10

// maxFreeTrains is how many spent trains the queue keeps for reuse: enough
// for a streaming writer's trains in flight; more would be memory kept for
// a burst to many addresses long after it went (Broadcast).
const maxFreeTrains = 8

// minTrainCap is the smallest train allocated: a train starts at sixteen
// times its first datagram, within [minTrainCap, maxTrainBytes], and
// doubles as it fills.
const minTrainCap = 2 << 10

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
	bytes   int           // capacity of the trains waiting
	started bool          // the sender goroutine was started
	closed  bool          // Close has begun: no sender goroutine starts
	space   chan struct{} // closed and replaced when trains went out, if writers wait for room
	waiters int
	free    []*train // spent, for reuse; at most maxFreeTrains

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
// writer is streaming, waiting for room there no later than the write
// deadline wd (nil: none). b is the caller's again when it returns.
func (c *Conn) transmit(b []byte, to netip.AddrPort, src netip.Addr, wd *deadline) error {
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
	return c.enqueueSend(b, to, src, now, wd)
}

// transmitTrain sends buf, sealed datagrams of size bytes each (the last
// may be shorter), to to from src, in as few system calls as the socket
// allows (UDP GSO), and returns how many went out: WriteBatch's trains. It
// goes straight to the socket when nothing waits in the send queue, and
// behind what waits otherwise, so that no datagram overtakes one written
// before it. buf is the caller's again when it returns.
func (c *Conn) transmitTrain(buf []byte, size int, to netip.AddrPort, src netip.Addr, wd *deadline) (int, error) {
	q := c.sq
	if !q.sending.Load() {
		n, err := c.sock.Load().WriteSegments(buf, size, to, src)
		q.lastEnd.Store(int64(time.Since(c.start)))
		return n, err
	}
	now := int64(time.Since(c.start))
	k := 0
	for off := 0; off < len(buf); off += size {
		if err := c.enqueueSend(buf[off:min(off+size, len(buf))], to, src, now, wd); err != nil {
			return k, err
		}
		k++
	}
	return k, nil
}

// enqueueSend queues b for the sender goroutine, waiting for room while
// the queue is full (until Close or the write deadline wd), and starts or
// wakes the goroutine. A nil wd is the Conn's own control datagrams
// (keepalives, path and token messages, from the timer, handshake and
// reading goroutines): they never wait for room, which a writer may hold
// for as long as its deadline allows; what finds the queue full is not
// sent (errSendQueueFull), as a full socket buffer drops it.
func (c *Conn) enqueueSend(b []byte, to netip.AddrPort, src netip.Addr, now int64, wd *deadline) error {
	q := c.sq
	q.mu.Lock()
	for q.bytes >= sendQueueBytes {
		if wd == nil {
			q.mu.Unlock()
			return errSendQueueFull
		}
		expired := wd.wait() // a deadline moved while waiting takes effect
		ch := q.space
		q.waiters++
		q.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-c.closed:
			err = ErrClosed
		case <-expired:
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
			if len(t.buf)+len(b) > cap(t.buf) {
				q.grow(t, len(b))
			}
			t.buf = append(t.buf, b...)
			return
		}
	}
	var t *train
	if n := len(q.free); n > 0 {
		t, q.free = q.free[n-1], q.free[:n-1]
	} else {
		t = &train{buf: make([]byte, 0, min(maxTrainBytes, max(16*len(b), minTrainCap)))}
	}
	q.bytes += cap(t.buf)
	if len(b) > cap(t.buf) {
		q.grow(t, len(b))
	}
	t.buf = append(t.buf[:0], b...)
	t.size, t.to, t.src = len(b), to, src
	q.trains = append(q.trains, t)
}

// grow gives t room for n more bytes: twice its capacity, within
// maxTrainBytes (fits keeps a train within it) unless one datagram is
// larger; q.mu is held.
func (q *sendQueue) grow(t *train, n int) {
	size := max(2*cap(t.buf), len(t.buf)+n)
	if size > maxTrainBytes {
		size = max(maxTrainBytes, len(t.buf)+n)
	}
	nb := make([]byte, len(t.buf), size)
	copy(nb, t.buf)
	q.bytes += cap(nb) - cap(t.buf)
	t.buf = nb
}

// recycle gives the spent trains of batch back: a few are kept for reuse,
// the rest left to the collector; q.mu is held.
func (q *sendQueue) recycle(batch []*train) {
	for _, t := range batch {
		q.bytes -= cap(t.buf)
		if len(q.free) < maxFreeTrains {
			t.buf = t.buf[:0]
			q.free = append(q.free, t)
		}
	}
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
			}
			q.mu.Lock()
			q.recycle(batch)
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
