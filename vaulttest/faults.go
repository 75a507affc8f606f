package vaulttest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"
)

// Faults configures a [FaultyConn]: the probability of each fault, from 0
// (never) to 1 (always), drawn independently for each datagram written, and
// the seed of the pseudo-random generator that draws them. The zero value
// injects no fault.
type Faults struct {
	// Drop is the probability that a datagram is discarded.
	Drop float64

	// Duplicate is the probability that a datagram is sent twice in a row.
	Duplicate float64

	// Reorder is the probability that a datagram is held back and sent
	// right after the next datagram that is sent. At most one datagram is
	// held at a time; see FaultyConn.Flush.
	Reorder float64

	// Corrupt is the probability that one bit of a datagram, chosen at
	// random, is flipped. Empty datagrams are never corrupted.
	Corrupt float64

	// Truncate is the probability that a datagram is cut to a length chosen
	// at random from 0 to one byte less than its length. Empty datagrams are
	// never truncated.
	Truncate float64

	// Inject is the probability that a datagram of random bytes, of a random
	// length from 1 to the length of the datagram written (1 if that is
	// empty), is sent to the same destination just before the datagram.
	Inject float64

	// Delay, if positive, delays every datagram sent by an extra duration
	// chosen at random from 0 to Delay, as jitter on a path does; datagrams
	// may then arrive in a different order. Injected datagrams are not
	// delayed.
	Delay time.Duration

	// Seed seeds the pseudo-random generator (a PCG) that draws the faults.
	Seed uint64
}

// validate panics if a probability is outside [0, 1] or Delay is negative.
func (f Faults) validate() {
	for _, p := range []struct {
		name string
		v    float64
	}{
		{"Drop", f.Drop}, {"Duplicate", f.Duplicate}, {"Reorder", f.Reorder},
		{"Corrupt", f.Corrupt}, {"Truncate", f.Truncate}, {"Inject", f.Inject},
	} {
		if math.IsNaN(p.v) || p.v < 0 || p.v > 1 {
			panic(fmt.Sprintf("vaulttest: Faults.%s = %v, not a probability in [0, 1]", p.name, p.v))
		}
	}
	if f.Delay < 0 {
		panic(fmt.Sprintf("vaulttest: Faults.Delay = %v, negative", f.Delay))
	}
}

// A Fault is a set of faults applied to one datagram, one bit per kind.
type Fault uint8

// The kinds of faults.
const (
	Dropped    Fault = 1 << iota // discarded
	Duplicated                   // sent twice
	Reordered                    // held back and sent after the next datagram
	Corrupted                    // one bit flipped
	Truncated                    // cut short
	Injected                     // preceded by a datagram of random bytes
	Delayed                      // sent after an extra delay
)

var faultNames = []string{"dropped", "duplicated", "reordered", "corrupted", "truncated", "injected", "delayed"}

// String returns the names of the faults in f joined by "|", such as
// "corrupted|truncated", or "none" if f is empty.
func (f Fault) String() string {
	if f == 0 {
		return "none"
	}
	var names []string
	for i, name := range faultNames {
		if f&(1<<i) != 0 {
			names = append(names, name)
		}
	}
	if rest := f &^ (1<<len(faultNames) - 1); rest != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint8(rest)))
	}
	return strings.Join(names, "|")
}

// An Event records one datagram written to a [FaultyConn] and what was done
// to it. Its byte slices must not be modified.
type Event struct {
	Seq     int           // position of the write among all writes, from 0
	Addr    net.Addr      // destination, as given to WriteTo
	Faults  Fault         // faults applied; zero if the datagram went through unchanged
	Data    []byte        // the datagram as written
	Sent    []byte        // the datagram as sent, after truncation and corruption; nil if Dropped
	Bit     int           // if Corrupted, the bit flipped: mask 1<<(Bit%8) of Sent[Bit/8]; otherwise -1
	Delay   time.Duration // if Delayed, the extra delay
	Garbage []byte        // if Injected, the datagram of random bytes sent before this one
}

// Counts holds the counters of a [FaultyConn]. Each fault counter counts the
// datagrams written that suffered that fault.
type Counts struct {
	Writes int // datagrams written through the FaultyConn (calls to WriteTo before Close)
	Sent   int // datagrams the underlying conn accepted, duplicates and injected ones included
	Errors int // datagrams the underlying conn refused with an error

	Dropped    int
	Duplicated int
	Reordered  int
	Corrupted  int
	Truncated  int
	Injected   int
	Delayed    int // datagrams given a positive extra delay

	Discarded int // held back or delayed datagrams that Close discarded before they were sent
}

// A FaultyConn is a [net.PacketConn] that injects faults, as configured by
// [Faults], into the datagrams written through it, and passes them to an
// underlying net.PacketConn.
//
// Only writes suffer faults: ReadFrom, LocalAddr and the deadline methods
// are those of the underlying conn, unchanged. To disturb both directions of
// a conversation, wrap the endpoints of both sides (the two ends of a
// [Pipe], for instance).
//
// Faults are applied in this order: Inject, Drop, Truncate, Corrupt (a bit
// of what is left after truncation), Duplicate, Reorder, Delay. A WriteTo
// whose datagram is dropped, held back or delayed returns len(b) and a nil
// error, as a lossy network does; otherwise it returns the error of the
// underlying conn's WriteTo. A datagram held back or delayed is written to
// the underlying conn when its time comes, subject to the conn's write
// deadline then; a failure is counted in [Counts].Errors.
//
// The faults are deterministic: two FaultyConns with the same Faults that
// are given the same sequence of datagram lengths apply the same faults,
// flip the same bits and inject the same bytes, whatever the contents and
// destinations of the datagrams. Writes are serialized, the underlying
// WriteTo being called with a lock held, so that concurrent writers still
// see one well-defined sequence; only with a positive Delay does the order
// in which datagrams are sent depend on timing.
//
// A FaultyConn records an [Event] for every datagram written, kept until
// the FaultyConn is garbage: it is meant for tests, not for long runs.
// It is safe for concurrent use by multiple goroutines.
type FaultyConn struct {
	pc net.PacketConn
	f  Faults

	mu      sync.Mutex // guards the fields below and serializes writes
	rng     *rand.Rand
	seq     int
	held    *unit // datagram held back by Reorder
	events  []Event
	counts  Counts
	closed  bool
	pending map[*time.Timer]struct{} // delayed sends not yet started
	wg      sync.WaitGroup           // delayed sends scheduled and not finished
}

var _ net.PacketConn = (*FaultyConn)(nil)

// A unit is what one write sends: a datagram, once or twice, after a delay.
type unit struct {
	b      []byte
	addr   net.Addr
	copies int
	delay  time.Duration
}

// pcgStream is the second word of the PCG state, fixed so that Seed alone
// determines the faults.
const pcgStream = 0x7661756c74746573 // "vaulttes"

// NewFaultyConn returns a FaultyConn that writes to pc with the faults f.
// The FaultyConn owns pc: its Close closes pc. NewFaultyConn panics if a
// probability in f is outside [0, 1] or f.Delay is negative.
func NewFaultyConn(pc net.PacketConn, f Faults) *FaultyConn {
	f.validate()
	return &FaultyConn{
		pc:      pc,
		f:       f,
		rng:     rand.New(rand.NewPCG(f.Seed, pcgStream)),
		pending: make(map[*time.Timer]struct{}),
	}
}

// WriteTo writes b to addr through the fault injector. It copies b, so the
// caller may reuse it at once, even when the datagram is held back or
// delayed. After Close it returns what the underlying conn's WriteTo returns
// (an error wrapping net.ErrClosed, for the conns of this package and of
// package net).
func (c *FaultyConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.pc.WriteTo(b, addr)
	}
	addr = cloneAddr(addr)
	ev := Event{Seq: c.seq, Addr: addr, Data: clone(b), Bit: -1}
	c.seq++
	c.counts.Writes++
	defer func() { c.events = append(c.events, ev) }()

	// Draw every decision for every datagram, so that the draws of one
	// datagram do not depend on which faults are enabled.
	r := c.rng
	inject, drop, truncate, corrupt, duplicate, reorder :=
		r.Float64(), r.Float64(), r.Float64(), r.Float64(), r.Float64(), r.Float64()

	if inject < c.f.Inject {
		g := make([]byte, 1+r.IntN(max(len(b), 1)))
		for i := range g {
			g[i] = byte(r.Uint32())
		}
		ev.Faults |= Injected
		ev.Garbage = g
		c.counts.Injected++
		c.send(g, addr)
	}
	if drop < c.f.Drop {
		ev.Faults |= Dropped
		c.counts.Dropped++
		return len(b), nil
	}
	out := ev.Data
	if len(out) > 0 && truncate < c.f.Truncate {
		out = out[:r.IntN(len(out))]
		ev.Faults |= Truncated
		c.counts.Truncated++
	}
	if len(out) > 0 && corrupt < c.f.Corrupt {
		out = clone(out)
		ev.Bit = r.IntN(8 * len(out))
		out[ev.Bit/8] ^= 1 << (ev.Bit % 8)
		ev.Faults |= Corrupted
		c.counts.Corrupted++
	}
	ev.Sent = out
	u := &unit{b: out, addr: addr, copies: 1}
	if duplicate < c.f.Duplicate {
		u.copies = 2
		ev.Faults |= Duplicated
		c.counts.Duplicated++
	}
	if c.f.Delay > 0 {
		u.delay = time.Duration(r.Int64N(int64(c.f.Delay) + 1))
		if u.delay > 0 {
			ev.Delay = u.delay
			ev.Faults |= Delayed
			c.counts.Delayed++
		}
	}
	if c.held == nil && reorder < c.f.Reorder {
		c.held = u
		ev.Faults |= Reordered
		c.counts.Reordered++
		return len(b), nil
	}
	err := c.emit(u)
	if h := c.held; h != nil {
		c.held = nil
		c.emit(h)
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// emit sends u now, or schedules it if it is delayed, and returns the error
// of its first copy sent now. c.mu must be held.
func (c *FaultyConn) emit(u *unit) error {
	if u.delay <= 0 {
		var first error
		for range u.copies {
			if err := c.send(u.b, u.addr); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	c.wg.Add(1)
	var t *time.Timer
	t = time.AfterFunc(u.delay, func() {
		defer c.wg.Done()
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.pending[t]; !ok {
			return // discarded by Close
		}
		delete(c.pending, t)
		for range u.copies {
			c.send(u.b, u.addr)
		}
	})
	c.pending[t] = struct{}{}
	return nil
}

// send writes one datagram to the underlying conn and counts it. c.mu must
// be held.
func (c *FaultyConn) send(b []byte, addr net.Addr) error {
	_, err := c.pc.WriteTo(b, addr)
	if err != nil {
		c.counts.Errors++
	} else {
		c.counts.Sent++
	}
	return err
}

// Flush sends the datagram held back by Reorder, if any, at once, and
// returns the error of the underlying conn's WriteTo. It does not hasten
// delayed datagrams. After Close it does nothing.
func (c *FaultyConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.held
	if h == nil {
		return nil
	}
	c.held = nil
	return c.emit(h)
}

// Close discards the datagram held back by Reorder and the delayed
// datagrams not yet sent, waits for delayed sends in progress to finish,
// and closes the underlying conn, returning its error.
func (c *FaultyConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		if c.held != nil {
			c.held = nil
			c.counts.Discarded++
		}
		for t := range c.pending {
			delete(c.pending, t)
			c.counts.Discarded++
			if t.Stop() {
				c.wg.Done()
			}
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	return c.pc.Close()
}

// Events returns the events recorded so far, one per datagram written, in
// the order of the writes.
func (c *FaultyConn) Events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.events...)
}

// Counts returns the counters of the faults applied so far.
func (c *FaultyConn) Counts() Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts
}

// ReadFrom reads from the underlying conn.
func (c *FaultyConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.pc.ReadFrom(b) }

// LocalAddr returns the local address of the underlying conn.
func (c *FaultyConn) LocalAddr() net.Addr { return c.pc.LocalAddr() }

// SetDeadline sets the deadlines of the underlying conn.
func (c *FaultyConn) SetDeadline(t time.Time) error { return c.pc.SetDeadline(t) }

// SetReadDeadline sets the read deadline of the underlying conn.
func (c *FaultyConn) SetReadDeadline(t time.Time) error { return c.pc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline of the underlying conn.
func (c *FaultyConn) SetWriteDeadline(t time.Time) error { return c.pc.SetWriteDeadline(t) }

func clone(b []byte) []byte {
	return append(make([]byte, 0, len(b)), b...)
}

// cloneAddr returns a copy of addr if it is a *net.UDPAddr, which a caller
// may modify after WriteTo returns, and addr itself otherwise.
func cloneAddr(addr net.Addr) net.Addr {
	if a, ok := addr.(*net.UDPAddr); ok && a != nil {
		return &net.UDPAddr{IP: clone(a.IP), Port: a.Port, Zone: a.Zone}
	}
	return addr
}
