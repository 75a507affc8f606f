package vaultudp

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Open workers: more than one core opens what one read of the socket
// brought in. The goroutine that read it (the background reader or a
// direct reader, reader.go) publishes the read (an openBatch) and wakes
// some of the Conn's open workers. Reader and workers then claim the
// read's datagrams one at a time, in order, from one atomic counter, and
// decrypt what they claim in place (openAhead). Meanwhile the reader
// handles the datagrams in the order read, each once it is decrypted:
// while the next one is still with a worker, it claims and decrypts a
// later one itself, so it waits only when every datagram of the read is
// claimed, and then for one datagram per worker at most.
//
// Only the decryption runs on a worker: the session lookup again, the
// replay window, the record, the path checks and the queueing stay with
// the reader, in the order read. So the replay window sees each session's
// counters in that order (session.accept, after the decryption, as
// wireguard-go's sequential receiver checks them after its parallel
// decryption), each peer's datagrams reach the read queue in the order
// they came, and the receive path's rules are the same whoever decrypts.
//
// A read is shared only when it holds openShareMin sealed datagrams or
// more: a lone datagram (a round trip, a direct reader waiting for its
// reply) is opened by the goroutine that read it, with no hand-off. And
// where the workers keep coming too late to take a part of the reads (no
// core is free for them), the reader stops sharing for a while
// (openMisses). The workers start with the first read worth sharing, one
// fewer than GOMAXPROCS (at most maxOpenWorkers), and end with the Conn.
//
// Why workers behind one socket rather than several SO_REUSEPORT sockets
// per Conn, and how this goes past 8 cores: BENCHMARKS.md ("Many cores on
// the receive side").

const (
	// openShareMin is the fewest sealed datagrams one read must hold to
	// be shared: below it a worker's wake-up costs about what it saves.
	openShareMin = 16
	// openPerWorker is how many datagrams of a read there are for each
	// worker woken for it.
	openPerWorker = 4
	// maxOpenWorkers bounds the workers: more would find nothing left
	// of a read of readBatchSize datagrams. Past that the single reader
	// is the bound (BENCHMARKS.md: several SO_REUSEPORT sockets, each
	// with its reader, feeding the same workers, then).
	maxOpenWorkers = readBatchSize/openPerWorker - 1
)

// preOpened is what openAhead found for a sealed datagram: its session,
// and the result of decrypting it (session.decrypt). s is nil when it left
// the datagram to receive.
type preOpened struct {
	s       *session
	env     []byte
	counter uint64
	err     error
	head    [16]byte // the bytes after the header before decryption (cutShort)
}

// openBatch is a read being shared: its datagrams, and which of them have
// been claimed. state packs the read's generation (high 32 bits), its
// datagram count (bits 16–31) and the next unclaimed datagram (bits
// 0–15): a worker woken for an earlier read of the same set finds another
// generation and claims nothing.
type openBatch struct {
	state atomic.Uint64
	pkts  []*packet // written by the reader before it publishes state

	// The reader's, under rs.mu.
	gen    uint32
	misses int // shared reads in a row the workers did little of
	skip   int // reads not to share before trying again
}

// openMissShare is the share of a read below which the workers are said
// to have missed it: woken too late to matter, because no core was free
// for them. After openMisses such reads in a row, the reader stops
// sharing for 2, 4, ... up to openBackoffMax reads, then tries again: on
// a machine whose cores are all busy, waking workers costs the reader and
// takes a core from whatever else runs, and gains nothing.
const (
	openMissShare  = 4 // 1/4 of a read's datagrams
	openMisses     = 4
	openBackoffMax = 256
)

// claim returns the next unclaimed datagram of read gen, if any.
func (b *openBatch) claim(gen uint32) (int, bool) {
	for {
		s := b.state.Load()
		n, next := int(s>>16&0xffff), int(s&0xffff)
		if uint32(s>>32) != gen || next >= n {
			return 0, false
		}
		if b.state.CompareAndSwap(s, s+1) {
			return next, true
		}
	}
}

// score counts a shared read of n datagrams of which the workers
// decrypted byWorkers, and sets how many reads are not to be shared next
// (openMisses).
func (b *openBatch) score(n, byWorkers int) {
	if byWorkers*openMissShare >= n {
		b.misses = 0
		return
	}
	if b.misses++; b.misses >= openMisses {
		b.skip = min(1<<min(b.misses-openMisses+1, 30), openBackoffMax)
	}
}

// openWake is the message that wakes a worker for read gen of b.
type openWake struct {
	b   *openBatch
	gen uint32
}

// openers are a Conn's open workers.
type openers struct {
	n    atomic.Int32 // workers started; 0 until the first read worth sharing
	wake chan openWake

	mu      sync.Mutex // start against stop
	stopped bool
	wg      sync.WaitGroup

	// Tests and benchmarks look: reads shared, and datagrams the
	// workers (not the readers) decrypted, ever.
	shared, byWorkers atomic.Uint64
	// persist, set by tests, has readers share every read worth it,
	// however little the workers take (no backoff).
	persist atomic.Bool
}

// openWorkers returns how many open workers the Conn has, starting them
// if it has none and GOMAXPROCS allows more than one core. The number is
// fixed when they start.
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
	// Room for every worker of two readers (Rebind may briefly make a
	// second): a wake that finds it full is not needed.
	o.wake = make(chan openWake, 2*maxOpenWorkers)
	o.wg.Add(want)
	for range want {
		go c.openWorker(o.wake)
	}
	o.n.Store(int32(want))
	return want
}

// stopOpeners ends the open workers and waits for them (Close). What a
// worker has not claimed of a read, its reader decrypts itself.
func (c *Conn) stopOpeners() {
	o := &c.opens
	o.mu.Lock()
	o.stopped = true
	o.mu.Unlock()
	o.wg.Wait()
}

// openSpin is how long a worker done with a read looks for the next one
// before it sleeps: a stream's next read comes within about that, and a
// sleeping worker's wake-up (several µs, often tens on a busy machine)
// would come when the reader has opened most of it alone.
const openSpin = 50 * time.Microsecond

func (c *Conn) openWorker(wake chan openWake) {
	defer c.opens.wg.Done()
	for {
		var w openWake
		select {
		case w = <-wake:
		case <-c.closed:
			return
		}
		for w.b != nil {
			for {
				i, ok := w.b.claim(w.gen)
				if !ok {
					break
				}
				p := w.b.pkts[i]
				c.openAhead(p)
				p.opened.Store(true)
			}
			w = openWake{}
			for spun := time.Now(); w.b == nil && time.Since(spun) < openSpin; {
				select {
				case w = <-wake:
				default:
					runtime.Gosched()
				}
			}
		}
	}
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
	if s == nil || !c.receivable(s, c.now()) {
		return // receive counts it, hands it to protocol v2, or resets
	}
	pre := &p.pre
	copy(pre.head[:], b[sealedHeaderLen:])
	pre.env, pre.counter, pre.err = s.decrypt(b)
	pre.s = s
}

// receiveShared hands the n datagrams of rs's last read to receive, in
// order, with the open workers decrypting ahead, and reports whether it
// did; it does nothing and returns false if the read is not worth sharing
// or the Conn has no workers. rs.mu is held.
func (c *Conn) receiveShared(rs *readSet, n int) bool {
	pkts := rs.pkts[:n]
	sealed := 0
	for _, p := range pkts {
		if len(p.data) > 1 && p.data[1] == typeSealed {
			sealed++
		}
	}
	if sealed < openShareMin {
		return false
	}
	b := &rs.batch
	if b.skip > 0 {
		b.skip--
		return false
	}
	w := c.openWorkers()
	if w == 0 {
		return false
	}
	b.gen++
	gen := b.gen
	b.pkts = pkts
	for _, p := range pkts {
		p.opened.Store(false)
	}
	b.state.Store(uint64(gen)<<32 | uint64(n)<<16)
	for range min(w, (n-1)/openPerWorker) {
		select {
		case c.opens.wake <- openWake{b, gen}:
		default: // full of wakes the workers have yet to see: they will
		}
	}
	c.opens.shared.Add(1)
	own := 0 // datagrams the reader decrypted itself
	for i, p := range pkts {
		for !p.opened.Load() {
			// With a worker: decrypt a later one meanwhile, or, when
			// all are claimed, let the worker's goroutine run.
			if j, ok := b.claim(gen); ok {
				q := pkts[j]
				c.openAhead(q)
				q.opened.Store(true)
				own++
			} else {
				runtime.Gosched()
			}
		}
		if c.receive(p) {
			rs.pkts[i] = c.getPacket()
		}
	}
	b.pkts = nil
	c.opens.byWorkers.Add(uint64(n - own)) // every datagram is claimed once: what the reader did not, a worker did
	if !c.opens.persist.Load() {
		b.score(n, n-own)
	}
	return true
}
