package vaultudp

import (
	"bytes"
	"net/netip"
	"sync"

	"golang.org/x/time/rate"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Handshake messages are handled off the data path, as wireguard-go's
// device/receive.go does: the reader that finds a hello, a reply or a
// final message (each costs several X25519 operations, an ML-KEM one or
// a signature, about a thousand times a datagram's open)
// copies it onto a queue bounded in work and goes on with the next
// datagram; up to runtime.GOMAXPROCS handshake workers per Conn work the
// queue, their cryptography in parallel, their commits in queue order
// (handshake_workers.go). When the queue holds more work than the
// workers can do within a retry interval the message is dropped and
// counted (Drops.HandshakeQueueFull): the sender retries, and under a
// flood the cookies (cookie.go) keep the queue for the sources that
// proved themselves. Cookie messages are cheap and handled at once.
//
// A message that finds the handshake path idle (nothing queued, nothing
// being handled) is handled at once by the reader instead, within a small
// rate (handshakeInlineRate): the hand-off to a handshake worker
// wakes a second goroutine, which costs each message of a Conn's first
// handshake tens of microseconds here, while a few signature checks a
// second cost the data path little. Beyond that rate, and while the
// workers are busy, messages queue as above, so a flood never
// holds up the data path for more than the rate allows. A Conn with a
// VerifyPeer callback always queues: the callback is the application's
// code, of unknown duration.

const (
	// maxHandshakeMsg is the longest handshake datagram queued: a
	// 1500-byte Ethernet frame's UDP payload over IPv4 (1472) and more. A
	// final message with a coalesced datagram is never longer than a
	// padded sealed datagram to the peer (coalesce), which is longer than
	// this only on paths above Ethernet's MTU: such finals are handled by
	// the reader itself, not queued (queueHandshake).
	maxHandshakeMsg = 1500

	// handshakeInlineRate and handshakeInlineBurst bound the messages the
	// readers handle themselves: at about 0.25 ms of a core each, 10 a
	// second hold the data path up for 2.5 ms a second at most, and cover
	// a Conn's first handshakes and rekeys with up to a thousand peers.
	handshakeInlineRate  = 10
	handshakeInlineBurst = 2
)

// newInlineLimiter returns the budget of handshake messages readers
// handle themselves.
func newInlineLimiter() *rate.Limiter {
	return rate.NewLimiter(handshakeInlineRate, handshakeInlineBurst)
}

// handshakeElem is a handshake message, copied out of the packet that
// carried it (the packet goes back to the reader at once), from the
// reader to the commit of its handling.
type handshakeElem struct {
	msg    [maxHandshakeMsg]byte
	n      int
	big    []byte // instead of msg: a final message longer than it (handleHandshakeNow)
	v2     []byte // instead of msg: a protocol v2 key exchange datagram (queueV2)
	from   netip.AddrPort
	local  netip.Addr
	kind   hsKind
	proved bool // a hello with a valid cookie for its source
}

// data returns the message.
func (e *handshakeElem) data() []byte {
	if e.big != nil {
		return e.big
	}
	return e.msg[:e.n]
}

// kindOf returns the kind of a native handshake message (msg[1] is a
// hello's, a reply's or a final message's type).
func kindOf(msg []byte) hsKind {
	switch msg[1] {
	case typeReply:
		return kindReply
	case typeFinal:
		return kindFinal
	}
	return kindHello
}

// getElem returns msg copied into an element of the pool (or, longer
// than maxHandshakeMsg, onto the heap).
func (c *Conn) getElem(msg []byte, from netip.AddrPort, local netip.Addr) *handshakeElem {
	e := c.hsElems.Get().(*handshakeElem)
	if len(msg) > len(e.msg) {
		e.big = bytes.Clone(msg)
	} else {
		e.n = copy(e.msg[:], msg)
	}
	e.from, e.local, e.kind = from, local, kindOf(msg)
	return e
}

// putElem gives e back to the pool.
func (c *Conn) putElem(e *handshakeElem) {
	e.big, e.v2, e.proved = nil, nil, false
	c.hsElems.Put(e)
}

// queueHandshake handles msg at once if the handshake path is idle, and
// otherwise puts it on the handshake queue, or drops it if the queue is
// full.
func (c *Conn) queueHandshake(msg []byte, from netip.AddrPort, local netip.Addr) {
	if len(msg) > maxHandshakeMsg && msg[1] != typeFinal {
		// Only a final message is longer: it carries a coalesced
		// datagram, large on a jumbo path (queued on the heap, getElem,
		// under the same rule as any other: never handled on the reader
		// while VerifyPeer may be waited for).
		c.stats.malformed.Add(1)
		return
	}
	proved := false
	if msg[1] == typeHello {
		var done bool
		if done, proved = c.helloGate(msg, from, local); done {
			return
		}
	}
	// hsQueued, not the queue's length: a message taken off the queue
	// but not yet handled must not be overtaken either.
	if c.cfg.VerifyPeer == nil && c.hsQueued.Load() == 0 && c.hsInline.Allow() {
		c.handleHandshakeNow(msg, from, local)
		return
	}
	e := c.getElem(msg, from, local)
	e.proved = proved
	c.enqueue(e)
}

// enqueue puts e on the handshake queue and counts it in hsQueued until
// its commit (work); if the queue has no room, or a hello from the same
// source took e's place there, e is counted (Drops.HandshakeQueueFull,
// Drops.HelloReplaced) and given back. It reports whether e was queued.
// The one place a message joins the queue.
func (c *Conn) enqueue(e *handshakeElem) bool {
	c.hsQueued.Add(1)
	res := c.hw.push(e)
	if res == pushQueued {
		return true
	}
	c.hsQueued.Add(-1)
	c.putElem(e)
	if res == pushMerged {
		c.stats.helloReplaced.Add(1)
	} else {
		c.stats.handshakeQueueFull.Add(1)
	}
	return false
}

// queueV2 puts a protocol v2 datagram carrying a plaintext key exchange
// (a signature check, and VerifyPeer, from any source on a v2 peer's IP)
// on the handshake queue, as a native hello is: handled by a handshake
// worker, dropped and counted (Drops.HandshakeQueueFull) when the queue
// holds half its budget of work: v2 key exchanges pass no cookie check
// (the reference has none), and anyone who forges a v2 peer's IP could
// otherwise fill the queue and crowd out native handshakes. It copies b.
func (c *Conn) queueV2(src netip.AddrPort, b []byte) bool {
	if !c.hw.room(kindV2, false) {
		c.stats.handshakeQueueFull.Add(1) // full: dropped before the copy
		return false
	}
	e := c.hsElems.Get().(*handshakeElem)
	e.from, e.local, e.kind, e.v2 = src, netip.Addr{}, kindV2, bytes.Clone(b)
	return c.enqueue(e) // v2 key exchanges are never merged
}

// receiveV2Deferred handles what queueV2 queued, and delivers its
// payload, if any, as receiveOther does.
func (c *Conn) receiveV2Deferred(src netip.AddrPort, b []byte) {
	from, payload := c.v2.ReceiveDeferred(src, b)
	if payload == nil {
		return
	}
	p := c.getPacket()
	p.from = from
	pr, _ := c.peerFor(from, lookupOnly)
	if !c.deliver(p, pr, &record{payload: payload, hasPayload: true, compressed: true}) {
		c.putPacket(p)
	}
}

// helloGate applies the cookie rule (cookie.go) to a hello on the reader,
// before it is queued, and reports whether it is done with it: malformed,
// or, the Conn being under load, carrying no valid cookie for its source,
// or one past its source's budget for such hellos; and whether the hello
// carries a valid cookie for its source (the queue favours those,
// hsWork.push).
// Such a hello gets a cookie message, within its source's budget, sent by
// a goroutine of its own from a queue of its own (cookieQueueLen; full, the
// hello is dropped, Drops.HandshakeQueueFull). So under a flood of hellos
// from sources that do not answer cookies (forged ones), the handshake
// queue holds only hellos that proved their source, and replies: the flood
// costs the reader a parse and a table look-up per hello, and cannot crowd
// out a client that answered its cookie. (Before, every hello was queued
// and checked, and its cookie sent, by the one handshake goroutine: a flood
// of 87,000 a second filled the queue, dropped 58% of the hellos,
// legitimate ones alike, and a new client needed seconds of retries.)
func (c *Conn) helloGate(msg []byte, from netip.AddrPort, local netip.Addr) (done, proved bool) {
	m, err := noise.ParseHello(msg) // structure only: no cryptography
	if err != nil {
		c.stats.malformed.Add(1)
		return true, false
	}
	wall := c.cfg.now()
	loaded := c.cookies.underLoad(wall)
	proved = !allZero(m.Cookie) && c.cookies.valid(from, m.Cookie, wall)
	if !loaded {
		return false, proved
	}
	if proved {
		// It proved its source; within the source's budget, on to the
		// queue (cookie.go: hellos with a valid cookie).
		if c.cookies.holders.allow(from, c.now()) {
			return false, true
		}
		c.stats.cookieLimit.Add(1)
		return true, true
	}
	if !c.cookies.budget.allow(from, c.now()) {
		c.stats.cookieLimit.Add(1)
		return true, false
	}
	if !c.cookies.jobs.push(cookieJob{from: from, local: local, index: m.SenderIndex}) {
		c.stats.handshakeQueueFull.Add(1)
	}
	return true, false
}

// allZero reports whether b is all zero bytes: a hello with no cookie.
func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// cookieQueueLen bounds the cookie messages waiting to be sent: a crowd's
// worth (a thousand clients whose hellos came at once, once the load was
// noticed, each get theirs at once rather than after a retry interval),
// 40 bytes each, allocated as they come: the goroutine sends them as they
// come, about 5 µs each.
const cookieQueueLen = 1024

// cookieJob is a cookie message to send: to from, from local, for the
// hello with sender index index.
type cookieJob struct {
	from  netip.AddrPort
	local netip.Addr
	index uint32
}

// cookieQueue holds the cookie messages waiting to be sent.
type cookieQueue struct {
	wake chan struct{} // cap 1: jobs came
	mu   sync.Mutex
	jobs []cookieJob
}

func newCookieQueue() cookieQueue { return cookieQueue{wake: make(chan struct{}, 1)} }

// push queues j, or reports false if cookieQueueLen wait.
func (q *cookieQueue) push(j cookieJob) bool {
	q.mu.Lock()
	if len(q.jobs) >= cookieQueueLen {
		q.mu.Unlock()
		return false
	}
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns the jobs waiting, and keeps spare's array for the next.
func (q *cookieQueue) take(spare []cookieJob) []cookieJob {
	q.mu.Lock()
	defer q.mu.Unlock()
	jobs := q.jobs
	q.jobs = spare[:0]
	return jobs
}

// cookieLoop sends the cookie messages helloGate queued, until Close.
func (c *Conn) cookieLoop() {
	defer c.wg.Done()
	var spare []cookieJob
	for {
		select {
		case <-c.closed:
			return
		case <-c.cookies.jobs.wake:
		}
		for {
			jobs := c.cookies.jobs.take(spare)
			if len(jobs) == 0 {
				spare = jobs
				break
			}
			wall := c.cfg.now()
			for _, j := range jobs {
				cookie := c.cookies.make(j.from, wall)
				c.stats.cookiesSent.Add(1)
				c.sendRawFrom(j.from, j.local, noise.CookieMsg(j.index, cookie[:]))
			}
			spare = jobs
		}
	}
}
