package vaultudp

import (
	"errors"
	"os"
	"sync"
	"time"
)

// Who reads the socket. A goroutine blocked in ReadFrom (or in the Read of
// a net.Conn from ConnTo or a Listener: an appReader) reads the socket
// itself and handles what arrives (handshakes, and other readers'
// datagrams, which go to their queues), so that a datagram reaches it
// with no hand-off between goroutines: on two cores a
// hand-off wakes a second thread, which costs more than the rest of the
// receive path. The background reader (readLoop) reads only while no
// application goroutine has been reading for directGrace, so that a
// program that never reads still answers handshakes, within directGrace.
// When an application reader arrives while the background reader waits in
// the socket, it interrupts it with a past socket deadline and takes over.
//
// This needs a socket whose read deadline interrupts a read in another
// goroutine (udpio.Caps.Deadlines: a *net.UDPConn); over other
// PacketConns the background reader reads alone and queues.

// directGrace is how long the background reader stays out of the socket
// after the last application read. It does not wait when no application
// goroutine has read yet, nor when the Conn expects a handshake message
// (wakeBackgroundReader): the first datagram must not wait for it.
const directGrace = 20 * time.Millisecond

// aLongTimeAgo is a deadline in the past, to interrupt a socket read.
var aLongTimeAgo = time.Unix(1, 0)

// appReader is an application reader that may read the socket itself
// (readDirect): the Conn's own read methods (Conn.own), or the Read of a
// net.Conn from ConnTo, whose peer's datagrams receive queues apart. What
// receive queues for it arrives on q; its deadline and its own end bound
// its reads.
type appReader struct {
	q        chan *packet
	deadline *deadline
	closed   chan struct{} // its Close (the Conn's, for the Conn's own)
	// gone, if set, reports why the reader cannot read any more (its
	// peer dropped); it is asked before every socket read, and the
	// reader is interrupted when it may have changed (dropPeerTableLocked).
	gone func() error
}

// readCoord coordinates the socket's readers.
type readCoord struct {
	// mu guards the fields below.
	mu         sync.Mutex
	appReaders int           // goroutines in ReadFrom that read the socket
	appReads   uint64        // how many direct reads have begun, ever
	sockDL     time.Time     // the read deadline last set on the socket
	appDL      *deadline     // the deadline of the application reader in the socket
	bgReading  bool          // the background reader is in a socket read
	bgSock     *socket       // ... of this socket
	kicked     bool          // ... and has been interrupted
	bgOut      chan struct{} // closed when the background reader leaves the socket
}

// bgBegin waits until the background reader may read s, and marks it
// reading: at once if no application goroutine ever read, or when woken
// by wakeBackgroundReader with no application reader in the socket, and
// otherwise once no direct read has begun for a whole directGrace. It
// returns false when the Conn is closed or s replaced. It polls every
// directGrace rather than being woken when application readers leave:
// they leave after every datagram, and waking another goroutine each time
// is the cost direct reads avoid. t is the caller's timer, reused.
func (c *Conn) bgBegin(s *socket, t *time.Timer) bool {
	rc := &c.rd
	rc.mu.Lock()
	for woken := false; ; {
		if c.isClosed() || c.sock.Load() != s {
			rc.mu.Unlock()
			return false
		}
		if rc.appReaders == 0 && (rc.appReads == 0 || woken) {
			break
		}
		reads := rc.appReads
		rc.mu.Unlock()
		t.Reset(directGrace)
		woken = false
		select {
		case <-t.C:
		case <-c.bgWake:
			woken = true
			t.Stop()
		case <-c.closed:
			t.Stop()
		}
		rc.mu.Lock()
		if rc.appReads == reads {
			woken = true // no application read for a whole grace
		}
	}
	c.setSockDeadlineLocked(s, time.Time{}) // an application reader may have left one
	rc.bgReading, rc.bgSock, rc.kicked = true, s, false
	rc.bgOut = make(chan struct{})
	rc.mu.Unlock()
	return true
}

// bgEnd marks the background reader out of the socket.
func (c *Conn) bgEnd(s *socket) (kicked bool) {
	rc := &c.rd
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.bgSock != s {
		return true // replaced by Rebind: its reader took over the state
	}
	kicked = rc.kicked
	rc.bgReading, rc.bgSock, rc.kicked = false, nil, false
	close(rc.bgOut)
	return kicked
}

// kickDirectReader interrupts an application goroutine blocked in a socket
// read with a past socket deadline, so that it takes what was queued for
// it without the socket (sendSelf). The reader re-arms the socket's
// deadline (readOnce).
func (c *Conn) kickDirectReader() {
	rc := &c.rd
	rc.mu.Lock()
	if rc.appReaders > 0 {
		c.setSockDeadlineLocked(c.sock.Load(), aLongTimeAgo)
	}
	rc.mu.Unlock()
}

// appBegin registers r, an application reader, and waits until the
// background reader is out of the socket.
func (c *Conn) appBegin(s *socket, r *appReader) {
	rc := &c.rd
	rc.mu.Lock()
	rc.appReaders++
	rc.appReads++
	rc.appDL = r.deadline
	for rc.bgReading {
		if !rc.kicked {
			rc.kicked = true
			c.setSockDeadlineLocked(rc.bgSock, aLongTimeAgo)
		}
		ch := rc.bgOut
		rc.mu.Unlock()
		<-ch // the background reader leaves at once: its read fails
		rc.mu.Lock()
	}
	// The socket's deadline is the reader's read deadline while it
	// reads the socket (SetReadDeadline keeps it so).
	c.setSockDeadlineLocked(s, r.deadline.time())
	rc.mu.Unlock()
}

func (c *Conn) appEnd() {
	rc := &c.rd
	rc.mu.Lock()
	rc.appReaders--
	rc.mu.Unlock()
}

// wakeBackgroundReader has the background reader read the socket now if no
// application goroutine is reading it: the Conn has sent a hello, and its
// reply must not wait for an application read or the grace. While one is
// reading, the background reader could only go back to waiting (bgBegin),
// and waking it for that costs a thread's wake-up just as the reply's
// reader is woken.
func (c *Conn) wakeBackgroundReader() {
	c.rd.mu.Lock()
	reading := c.rd.appReaders > 0
	c.rd.mu.Unlock()
	if reading {
		return
	}
	select {
	case c.bgWake <- struct{}{}:
	default:
	}
}

// directToken is the token an application reader holds to read the
// socket itself (readDirect): a channel of one, sent to when taken; nil,
// never ready in a select, if the socket's deadlines cannot interrupt a
// read (then the background reader reads alone).
func (c *Conn) directToken() chan struct{} {
	if !c.sock.Load().Caps().Deadlines {
		return nil
	}
	return c.appToken
}

// setReadDeadline sets d, an application reader's read deadline, to t,
// and the socket's while that reader reads it.
func (c *Conn) setReadDeadline(d *deadline, t time.Time) {
	d.set(t)
	rc := &c.rd
	rc.mu.Lock()
	if rc.appReaders > 0 && rc.appDL == d {
		c.setSockDeadlineLocked(c.sock.Load(), t)
	}
	rc.mu.Unlock()
}

// setSockDeadlineLocked sets the socket's read deadline unless it is
// already t (each direct read would otherwise reset a runtime timer);
// c.rd.mu is held.
func (c *Conn) setSockDeadlineLocked(s *socket, t time.Time) {
	rc := &c.rd
	if !t.Equal(rc.sockDL) || s.dlUnknown {
		s.SetReadDeadline(t)
		rc.sockDL, s.dlUnknown = t, false
	}
}

// readDirect reads the socket for r, an application reader, with the
// socket's read set, until a datagram is queued for r, and returns the
// first in r's queue: the background reader is out of the socket
// (appBegin) and no other application goroutine reads it (the token r's
// goroutine holds). Its errors are unwrapped: ErrClosed (the Conn's or
// r's Close), os.ErrDeadlineExceeded, what r.gone says, or the socket's
// (readerr.go).
func (c *Conn) readDirect(r *appReader) (*packet, error) {
	for {
		s := c.sock.Load()
		c.appBegin(s, r)
		s.rs.mu.Lock()
		p, err := c.readOnce(s.rs, s, r)
		s.rs.mu.Unlock()
		c.appEnd()
		if err != errRetry {
			return p, err
		}
	}
}

// errRetry says the socket was replaced under a reader (Rebind).
var errRetry = errors.New("vaultudp: socket replaced")

// readOnce reads the socket until a datagram is queued for r, and returns
// the first in its queue.
func (c *Conn) readOnce(rs *readSet, s *socket, r *appReader) (*packet, error) {
	var fails readBackoff // transient errors in a row (readerr.go)
	for {
		select {
		case p := <-r.q:
			return p, nil
		default:
		}
		if c.isClosed() || isClosed(r.closed) {
			return nil, ErrClosed
		}
		if isClosed(r.deadline.wait()) {
			return nil, os.ErrDeadlineExceeded
		}
		if r.gone != nil {
			if err := r.gone(); err != nil {
				return nil, err
			}
		}
		n, err := c.readInto(rs)
		if err != nil {
			switch {
			case c.isClosed():
				return nil, ErrClosed
			case c.sock.Load() != s:
				return nil, errRetry
			case errors.Is(err, os.ErrDeadlineExceeded):
				// The reader's deadline passed (its timer may close the
				// channel checked above a moment later), or it moved.
				t := r.deadline.time()
				if !t.IsZero() && !time.Now().Before(t) {
					return nil, os.ErrDeadlineExceeded
				}
				// Or a datagram was queued for this reader, or its
				// state changed (kickDirectReader): the socket gets the
				// reader's deadline back, and the loop looks again.
				c.rd.mu.Lock()
				c.setSockDeadlineLocked(s, t)
				c.rd.mu.Unlock()
				continue
			}
			c.log.Debug("vaultudp: read", "err", err)
			if err := c.directReadFailed(err, &fails, r); err != nil {
				return nil, err // the socket fails
			}
			continue
		}
		fails.fails = 0
		c.receiveSet(rs, n)
		c.receiveBuffered(rs)
	}
}

// readLoop reads s until it is closed (by Close or Rebind), handling
// every datagram: handshakes are answered here, so a Conn that only
// writes still completes them. It reads with s's read set, which it
// releases when it returns.
func (c *Conn) readLoop(s *socket) {
	defer c.wg.Done()
	rs := s.rs
	defer c.releaseReadSet(rs)
	direct := s.Caps().Deadlines // application readers take turns (reader.go)
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	var fails readBackoff // failed reads in a row (readerr.go)
	for {
		if direct && !c.bgBegin(s, idle) {
			return
		}
		rs.mu.Lock()
		n, err := c.readInto(rs)
		if err == nil {
			c.receiveSet(rs, n)
			c.receiveBuffered(rs)
		}
		rs.mu.Unlock()
		// Out of the socket only now that what it read is queued: an
		// application reader looks at the queue before the socket.
		if direct && c.bgEnd(s) && err != nil {
			continue // an application reader interrupted us
		}
		if err != nil {
			if c.isClosed() || c.sock.Load() != s {
				return
			}
			if errors.Is(err, ErrClosed) {
				return
			}
			c.log.Debug("vaultudp: read", "err", err)
			if !c.bgReadFailed(err, &fails, idle) { // to ReadFrom, backed off
				return
			}
		} else if fails.fails > 0 {
			c.bgReadSucceeded(&fails)
		}
	}
}

// receiveSet hands the n datagrams of rs's last read to receive, and
// replaces the packets it keeps; rs.mu is held.
func (c *Conn) receiveSet(rs *readSet, n int) {
	if !c.receiveShared(rs, n) { // the open workers decrypt ahead (receive_workers.go)
		c.receiveRange(rs, 0, n)
	}
}

// receiveRange hands rs.pkts[i:n] to receive, in order; rs.mu is held.
func (c *Conn) receiveRange(rs *readSet, i, n int) {
	for ; i < n; i++ {
		if c.receive(rs.pkts[i]) {
			rs.pkts[i] = c.getPacket()
		}
	}
}

// receiveBuffered hands to receive what rs's reader holds from its last
// read (a GRO read may bring in more datagrams than fit the packets), so
// that nothing waits in it when its goroutine leaves the socket; rs.mu is
// held.
func (c *Conn) receiveBuffered(rs *readSet) {
	for rs.r.r.Buffered() > 0 {
		n, err := c.readInto(rs)
		if err != nil {
			return
		}
		c.receiveSet(rs, n)
	}
}
