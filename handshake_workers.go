package vaultudp

import (
	"net/netip"
	"runtime"
	"sync"
	"time"
)

// The handshake workers. A handshake message is handled in two steps:
//
//   - prepare: its costly cryptography (a hello's Noise message 2: static
//     and ephemeral keys, an encapsulation, two DH, a signature; a final
//     message's DH and signature check), on any of up to
//     runtime.GOMAXPROCS workers at once, holding no lock of the Conn's
//     but the brief ones its look-ups take (the peer table, the peer, the
//     response's own);
//   - commit: what it changes and sends (the reply, the session's
//     install, the confirmation), one message at a time and in the order
//     the messages left the queue, whichever worker prepared them.
//
// The order of commits keeps what held when one goroutine worked the
// queue: the effects of a handshake message come after those of every
// message queued before it (an answer to a hello proves that what came
// before it was handled), and two messages from one peer take effect in
// the order they came. A commit that waits (Config.VerifyPeer, a reply's
// trust rules) holds up the commits behind it, as it held up the one
// handshake goroutine before, but not the cryptography of the messages
// behind it.
//
// The queue is bounded in work, not in messages: each message counts the
// time its kind took lately (an average of measured prepare and commit
// times, wall clock: on a loaded machine, when answers actually come),
// and a message is dropped (Drops.HandshakeQueueFull) when the queue holds
// more than its workers can do within the horizon: half the handshake
// timeout, a retry interval at least (Conn.retryAfter). An answer within
// it is one the initiator still takes: a hello from a source whose
// earlier hello waits in the queue (the initiator's retry) takes that
// one's place, so the answer is to its newest hello, and it comes before
// the initiator's attempt times out. A dropped message's sender retries:
// a drop means the workers have a horizon's work queued, no CPU to spare
// for it sooner. Replies and final messages complete handshakes under way
// and go first; they are dropped only when those already queued are a
// whole budget's work. Hellos without a cookie proving their source
// (under the cookie threshold, or before the load was noticed) take at
// most half the budget: under load the queue keeps room for the hellos
// that proved their source; and one source has one hello queued at most,
// so that one socket holding a cookie cannot fill the queue. Protocol v2
// key exchanges, which no cookie gates and whose work is all in their
// commits, take at most 1/hsV2Share of a retry interval's work, so that a
// flood of them forged from a v2 peer's IP delays the native hellos
// behind them by tens of milliseconds, not by a retry interval. The
// first hsMinQueued native messages are queued whatever their estimate
// (the queue's size before), and a bound on the number of messages
// (hsMaxQueuedPerWorker) keeps the memory bounded when the estimates are
// low.

// hsKind is a handshake message's kind, for its cost estimate.
type hsKind uint8

const (
	kindHello hsKind = iota
	kindReply
	kindFinal
	kindV2 // a protocol v2 key exchange (queueV2)
	numKinds
)

// hsFirstCost is each kind's estimated cost before any was measured:
// about what this machine measured (BENCHMARKS.md), rounded up.
var hsFirstCost = [numKinds]time.Duration{
	kindHello: 500 * time.Microsecond,
	kindReply: 500 * time.Microsecond,
	kindFinal: 200 * time.Microsecond,
	kindV2:    300 * time.Microsecond,
}

const (
	// hsMaxQueuedPerWorker bounds the messages queued, per worker: about
	// 1.6 KiB each, so 1.6 MiB per worker at most, under a crowd of
	// sources that answered their cookies.
	hsMaxQueuedPerWorker = 1024
	// hsMinQueued native messages are always taken, whatever their
	// estimated work: the queue's size before it was bounded in work, so
	// that a machine where handshakes are slow (loaded by other work, or
	// the race detector's, where one costs 10-40 ms) queues a crowd's
	// first hellos as it did, first come first served, rather than make
	// them win a place by their retries.
	hsMinQueued = 256
	// hsMinCost and the budget bound one measurement's weight: a commit
	// that waited for VerifyPeer, or a worker descheduled for a while,
	// must not make the queue refuse everything for long.
	hsMinCost = 10 * time.Microsecond
	// hsV2Share bounds the protocol v2 key exchanges queued to a
	// 1/hsV2Share of a retry interval's work (62 ms by default, about 200
	// of them; before the work bound, 128): they are all in their
	// commits, one at a time, and anyone who forges a v2 peer's IP can
	// send them, with no cookie to prove the source.
	hsV2Share = 16
	// hsCostWeight is the weight of the newest measurement in a kind's
	// average (1/hsCostWeight).
	hsCostWeight = 8
)

// hsWork is the handshake queue, its workers' count, and the order of
// commits. Its mutex is a leaf: held only briefly, never across a
// message's handling.
type hsWork struct {
	maxWorkers int           // runtime.GOMAXPROCS at Listen: workers at most
	retry      time.Duration // the retry interval (Conn.retryAfter)
	budget     time.Duration // the work queued at most: maxWorkers × the horizon
	maxLen     int           // messages queued at most
	minQueued  int           // native messages queued whatever their work (hsMinQueued)
	wake       chan struct{} // cap 1: work came for the first worker

	mu         sync.Mutex
	q          [2]elemFIFO // [0]: replies and final messages, taken first; [1]: hellos and v2 key exchanges
	queued     [numKinds]int
	est        [numKinds]time.Duration
	hellosFrom map[netip.AddrPort]*handshakeElem // the hello queued from each source
	workers    int                               // running, the first included
	peak       int                               // workers at most so far (read by the tests)
	next, due  uint64                            // the ticket taken last + 1; the ticket whose commit is due
	ready      map[uint64]func()                 // commits prepared, waiting for their turn
	committing bool                              // a goroutine is running commits
}

// elemFIFO is a queue of handshake messages; its array is kept between
// bursts.
type elemFIFO struct {
	s    []*handshakeElem
	head int
}

func (f *elemFIFO) len() int { return len(f.s) - f.head }

func (f *elemFIFO) push(e *handshakeElem) { f.s = append(f.s, e) }

func (f *elemFIFO) pop() *handshakeElem {
	e := f.s[f.head]
	f.s[f.head] = nil
	f.head++
	if f.head == len(f.s) {
		f.s, f.head = f.s[:0], 0
	}
	return e
}

// newHSWork returns the queue of a Conn whose retry interval is retry and
// handshake timeout timeout, with up to workers workers (0:
// runtime.GOMAXPROCS).
func newHSWork(workers int, retry, timeout time.Duration) *hsWork {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &hsWork{
		maxWorkers: workers,
		retry:      retry,
		budget:     time.Duration(workers) * max(retry, timeout/2),
		maxLen:     workers * hsMaxQueuedPerWorker,
		minQueued:  hsMinQueued,
		wake:       make(chan struct{}, 1),
		est:        hsFirstCost,
		workers:    1,
		peak:       1,
	}
}

// class is the queue a kind goes to.
func (k hsKind) class() int {
	if k == kindReply || k == kindFinal {
		return 0
	}
	return 1
}

// workLocked returns the estimated work of the messages of class 0 (and
// of both classes if all) queued, at the estimates of now. w.mu is held.
func (w *hsWork) workLocked(all bool) time.Duration {
	var d time.Duration
	for k := range numKinds {
		if all || k.class() == 0 {
			d += time.Duration(w.queued[k]) * w.est[k]
		}
	}
	return d
}

// roomLocked reports whether a message of kind k (a hello with a valid
// cookie if proved) fits in the queue: the rules above. An empty queue
// always takes one message. w.mu is held.
func (w *hsWork) roomLocked(k hsKind, proved bool) bool {
	n := w.q[0].len() + w.q[1].len()
	if k != kindV2 && n < w.minQueued {
		return true // never fewer than the 256 the queue held before its work bound
	}
	var ahead, limit time.Duration
	switch {
	case k.class() == 0:
		ahead, limit = w.workLocked(false), w.budget
	case k == kindHello && proved:
		ahead, limit = w.workLocked(true), w.budget
	case k == kindV2 && w.queued[kindV2] > 0 && time.Duration(w.queued[kindV2]+1)*w.est[kindV2] > w.retry/hsV2Share:
		return false // one at least, whatever its estimate
	default: // hellos that proved nothing, v2 key exchanges
		ahead, limit = w.workLocked(true), w.budget/2
	}
	return n < w.maxLen && (n == 0 || ahead+w.est[k] <= limit)
}

// room reports whether a message of kind k would be queued now.
func (w *hsWork) room(k hsKind, proved bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.roomLocked(k, proved)
}

// pushResult is what push did with a message.
type pushResult uint8

const (
	pushDropped pushResult = iota // no room: the caller drops and counts it
	pushQueued                    // queued: a worker has it now
	pushMerged                    // a hello whose source's earlier hello waits: copied over it; the caller keeps e
)

// push queues e, or reports that the queue has no room for its work. A
// hello from a source whose earlier hello still waits there takes that
// one's place instead (pushMerged): its initiator sent it as a retry, and
// takes an answer to its newest hello or the one before only, so the
// answer goes to the newest, as soon as the earlier would have had one,
// and costs one answer, not two.
func (w *hsWork) push(e *handshakeElem) pushResult {
	w.mu.Lock()
	if e.kind == kindHello {
		if q := w.hellosFrom[e.from]; q != nil {
			q.n = copy(q.msg[:], e.data())
			q.local, q.proved = e.local, q.proved || e.proved
			w.mu.Unlock()
			return pushMerged
		}
	}
	if !w.roomLocked(e.kind, e.proved) {
		w.mu.Unlock()
		return pushDropped
	}
	if e.kind == kindHello {
		if w.hellosFrom == nil {
			w.hellosFrom = make(map[netip.AddrPort]*handshakeElem)
		}
		w.hellosFrom[e.from] = e
	}
	w.q[e.kind.class()].push(e)
	w.queued[e.kind]++
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return pushQueued
}

// pop takes the next message, replies and final messages first, with the
// ticket of its commit. If there is none, or maxAhead messages taken wait
// for their commits, and the caller is not the first worker, the caller's
// worker ends (it is counted out); the first waits for wake, which each
// commit sends.
func (w *hsWork) pop(first bool) (e *handshakeElem, ticket uint64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := range w.q {
		if w.q[c].len() > 0 && w.next-w.due < uint64(w.maxAhead()) {
			e = w.q[c].pop()
			w.queued[e.kind]--
			if e.kind == kindHello {
				delete(w.hellosFrom, e.from)
			}
			t := w.next
			w.next++
			return e, t, true
		}
	}
	if !first {
		w.workers--
	}
	return nil, 0, false
}

// maxAhead bounds the messages taken off the queue whose commits have not
// run: the workers do not run ahead of the commits, or messages whose work
// is all in their commit (a reply, a v2 key exchange) would leave the
// queue, and its bound, at once, and wait in w.ready without one.
func (w *hsWork) maxAhead() int { return 2 * w.maxWorkers }

// retire counts out a worker that ends with messages queued (Close).
func (w *hsWork) retire() {
	w.mu.Lock()
	w.workers--
	w.mu.Unlock()
}

// ticket returns a ticket for a message handled outside the queue (by a
// reader, the queue being idle): its commit comes after those of the
// messages taken before it.
func (w *hsWork) ticket() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.next
	w.next++
	return t
}

// moreWorkers reports whether the caller, a worker that has just taken a
// message, should start another: messages wait and fewer than maxWorkers
// run. The count includes the one it reports.
func (w *hsWork) moreWorkers() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.q[0].len()+w.q[1].len() == 0 || w.workers >= w.maxWorkers {
		return false
	}
	w.workers++
	w.peak = max(w.peak, w.workers)
	return true
}

// observe adds one measurement of what a message of kind k cost (its
// prepare and commit) to the kind's estimate.
func (w *hsWork) observe(k hsKind, d time.Duration) {
	d = min(max(d, hsMinCost), w.budget)
	w.mu.Lock()
	w.est[k] += (d - w.est[k]) / hsCostWeight
	w.mu.Unlock()
}

// finish runs commit, the second step of the message with ticket t, in
// its turn: at once if every earlier ticket's has run and no goroutine is
// running commits; otherwise the goroutine that runs the one before it
// runs it, and finish returns at once. So a worker never waits for the
// turn of its message: it goes on to the next one. The commits run with
// w.mu released.
func (w *hsWork) finish(t uint64, commit func()) {
	w.mu.Lock()
	if w.ready == nil {
		w.ready = make(map[uint64]func())
	}
	w.ready[t] = commit
	if w.committing {
		w.mu.Unlock()
		return
	}
	w.committing = true
	for {
		f, ok := w.ready[w.due]
		if !ok {
			break
		}
		delete(w.ready, w.due)
		w.due++
		w.mu.Unlock()
		f()
		select {
		case w.wake <- struct{}{}: // a worker held back by maxAhead may take the next
		default:
		}
		w.mu.Lock()
	}
	w.committing = false
	w.mu.Unlock()
}

// handshakeLoop is the first handshake worker, which runs until Close;
// it starts the others (extraWorker) when messages wait, up to
// maxWorkers, and they end when the queue is empty. (Started only by a
// worker, which the Conn's WaitGroup counts: Close waits for them all.)
func (c *Conn) handshakeLoop() {
	defer c.wg.Done()
	c.wg.Add(1) // counted while this one is: Close waits for both
	go c.cookieLoop()
	for {
		select {
		case <-c.closed:
			return
		default:
		}
		e, t, ok := c.hw.pop(true)
		if !ok {
			select {
			case <-c.closed:
				return
			case <-c.hw.wake:
			}
			continue
		}
		c.spawnWorker()
		c.work(e, t)
	}
}

// spawnWorker starts another worker if messages wait and fewer than
// maxWorkers run; the caller is a worker.
func (c *Conn) spawnWorker() {
	if c.hw.moreWorkers() {
		c.wg.Add(1)
		go c.extraWorker()
	}
}

// extraWorker works the queue until it is empty, or Close.
func (c *Conn) extraWorker() {
	defer c.wg.Done()
	for {
		select {
		case <-c.closed:
			c.hw.retire()
			return
		default:
		}
		e, t, ok := c.hw.pop(false)
		if !ok {
			return
		}
		c.spawnWorker()
		c.work(e, t)
	}
}

// work handles e, which has ticket t: its first step now, its commit in
// its turn. Whoever runs the commit then gives e back.
func (c *Conn) work(e *handshakeElem, t uint64) {
	start := time.Now()
	commit := c.prepareHandshake(e)
	took := time.Since(start)
	c.hw.finish(t, func() {
		start := time.Now()
		if commit != nil && !c.isClosed() {
			commit()
		}
		c.hw.observe(e.kind, took+time.Since(start))
		c.hsQueued.Add(-1)
		c.putElem(e)
	})
}

// prepareHandshake does the first step of e's handling and returns its
// commit (nil: nothing to commit).
func (c *Conn) prepareHandshake(e *handshakeElem) func() {
	switch e.kind {
	case kindHello:
		return c.prepareHello(e.data(), e.from, e.local)
	case kindFinal:
		return c.prepareFinal(e.data(), e.from, e.local)
	case kindReply:
		return func() { c.handleReply(e.data()) } // all of it in its turn (handshake_initiator.go)
	case kindV2:
		return func() { c.receiveV2Deferred(e.from, e.v2) } // in arrival order, as the reference does
	}
	return nil
}

// handleHandshakeNow handles msg, a hello, a reply or a final message,
// outside the queue: its first step on the calling goroutine, its commit
// in its turn after those of the messages taken before it (on this
// goroutine, unless another is running commits: then by that one). A
// reader calls it when the handshake path is idle (queueHandshake); tests
// and benchmarks call it.
func (c *Conn) handleHandshakeNow(msg []byte, from netip.AddrPort, local netip.Addr) {
	e := c.getElem(msg, from, local)
	c.hsQueued.Add(1)
	c.work(e, c.hw.ticket())
}
