package vaultudp

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Open workers: more than one core opens what one read of the socket
// brought in. The goroutine that read it (the background reader or a
// direct reader, reader.go) keeps the first few datagrams of the read for
// itself and hands the rest, in jobs of openChunk, to the Conn's open
// workers, which decrypt them in place (openAhead) while it opens and
// handles its own. It then decrypts the jobs no worker has taken yet
// itself, waits for those taken, and handles the rest in the order read: the
// replay window sees each session's counters in that order (accept, after
// the decryption, as wireguard-go's sequential receiver checks them), and
// each peer's datagrams reach the read queue in the order they came.
// Nothing but the decryption runs on a worker: the session lookup, the
// replay window, the record, the path checks and the queueing stay with
// the reader, so the receive path's rules are the same whoever decrypts.
//
// A read is shared out only when it holds openShareMin sealed datagrams or
// more: a lone datagram (a round trip, a direct reader waiting for its
// reply) is opened by the goroutine that read it, with no hand-off. The
// workers start with the first read worth sharing, one fewer than
// GOMAXPROCS (at most maxOpenWorkers), and end with the Conn.
//
// Why workers behind one socket rather than several SO_REUSEPORT sockets
// per Conn: BENCHMARKS.md ("Open workers").

const (
	// openShareMin is the fewest sealed datagrams one read must hold to
	// be shared out: below it a worker's wake-up costs about what it
	// saves.
	openShareMin = 8
	// openChunk is how many datagrams of a read make one job. Jobs
	// smaller than a worker's share balance the work by themselves: a
	// worker that wakes late takes fewer, and the reader, done with its
	// own, opens those no worker has taken (joinOpens).
	openChunk = 4
	// maxOpenWorkers bounds the workers: a read holds at most
	// readBatchSize datagrams, readBatchSize/openChunk jobs, the first
	// the reader's own. Past that the single reader is the bound
	// (BENCHMARKS.md: several sockets, each with its reader, then).
	maxOpenWorkers = readBatchSize/openChunk - 1
)

// preOpened is what an open worker found for a sealed datagram: its
// session, and the result of decrypting it (session.decrypt). s is nil
// when the worker left the datagram to the reader.
type preOpened struct {
	s       *session
	env     []byte
	counter uint64
	err     error
	head    [16]byte // the bytes after the header before decryption (cutShort)
}

// openJob is a part of a read for a worker: it decrypts pkts and then
// marks done.
type openJob struct {
	pkts []*packet
	done *sync.WaitGroup
}

// openers are a Conn's open workers.
type openers struct {
	n    atomic.Int32 // workers started; 0 until the first read worth sharing
	jobs chan openJob

	mu      sync.Mutex // start against stop
	stopped bool
	wg      sync.WaitGroup

	shared atomic.Uint64 // reads shared out, ever (tests and benchmarks look)
}

// openWorkers returns how many open workers the Conn has, starting them
// if it has none and GOMAXPROCS allows more than one core.
func (c *Conn) openWorkers() int {
	if n := c.opens.n.Load(); n > 0 {
		return int(n)
	}
	want := min(runtime.GOMAXPROCS(0)-1, maxOpenWorkers)
	if want < 1 {
		return 0
	}
	o := &c.opens
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stopped {
		return 0
	}
	if n := o.n.Load(); n > 0 {
		return int(n)
	}
	o.jobs = make(chan openJob, 2*maxOpenWorkers) // a read makes at most maxOpenWorkers jobs; Rebind may briefly make two readers
	o.wg.Add(want)
	for range want {
		go c.openWorker(o.jobs)
	}
	o.n.Store(int32(want))
	return want
}

// stopOpeners ends the open workers and waits for them (Close). Parts a
// worker did not take are done by the reader that shared them out
// (joinOpens).
func (c *Conn) stopOpeners() {
	o := &c.opens
	o.mu.Lock()
	o.stopped = true
	o.mu.Unlock()
	o.wg.Wait()
}

func (c *Conn) openWorker(jobs chan openJob) {
	defer c.opens.wg.Done()
	for {
		select {
		case j := <-jobs:
			c.openPart(j)
		case <-c.closed:
			return
		}
	}
}

// openPart decrypts the sealed datagrams of j ahead of their turn.
func (c *Conn) openPart(j openJob) {
	for _, p := range j.pkts {
		c.openAhead(p)
	}
	j.done.Done()
}

// openAhead decrypts p in place if it is a sealed datagram of a live
// session, and records what it found in p.pre for receiveSealed; it
// leaves anything else to receive (p.pre.s stays nil). It reads only what
// may be read concurrently: the session index, the protocol v2 peers by
// address, the clock, and the session's receive key.
func (c *Conn) openAhead(p *packet) {
	b := p.data
	if p.truncated || len(b) < openHeaderLen || b[0] != ProtocolVersion || b[1] != typeSealed {
		return
	}
	idx, ok := sealedIndex(b)
	if !ok || c.notNativeAddr(p.from) {
		return
	}
	s := c.index.lookup(idx)
	if s == nil || !c.receivable(s) {
		return // receive counts it, hands it to protocol v2, or resets
	}
	pre := &p.pre
	copy(pre.head[:], b[sealedHeaderLen:])
	pre.env, pre.counter, pre.err = s.decrypt(b)
	pre.s = s
}

// receivable reports whether s still takes datagrams (receiveLimit).
func (c *Conn) receivable(s *session) bool {
	return time.Duration(c.now()-s.created) < c.receiveLimit()
}

// shareOpens hands the datagrams of one read, pkts, to the open workers
// in jobs of openChunk, if the read is worth sharing, and returns how many
// of pkts, from the first, the caller opens itself before it waits for
// the workers (joinOpens); 0 if none was shared. rs.mu is held.
func (c *Conn) shareOpens(rs *readSet, pkts []*packet) int {
	sealed := 0
	for _, p := range pkts {
		if len(p.data) > 1 && p.data[1] == typeSealed {
			sealed++
		}
	}
	if sealed < openShareMin || c.openWorkers() == 0 {
		return 0
	}
	jobs := c.opens.jobs
	for lo := openChunk; lo < len(pkts); lo += openChunk {
		j := openJob{pkts: pkts[lo:min(lo+openChunk, len(pkts))], done: &rs.opening}
		rs.opening.Add(1)
		select {
		case jobs <- j:
		default:
			c.openPart(j) // the queue is full (another reader's jobs): do it here
		}
	}
	c.opens.shared.Add(1)
	return openChunk
}

// joinOpens waits until the parts shareOpens handed out are decrypted,
// doing those no worker has taken yet itself. rs.mu is held.
func (c *Conn) joinOpens(rs *readSet) {
	jobs := c.opens.jobs
	for {
		select {
		case j := <-jobs: // ours, or another reader's (Rebind): done either way
			c.openPart(j)
			continue
		default:
		}
		break
	}
	rs.opening.Wait()
}
