package vaultudp

import (
	"bytes"
	"net/netip"

	"golang.org/x/time/rate"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Handshake messages are handled off the data path, as wireguard-go's
// device/receive.go does: the reader that finds a hello, a reply or a
// final message (each costs several X25519 operations, an ML-KEM one or
// a signature, about a thousand times a datagram's open)
// copies it onto a bounded queue and goes on with the next datagram; one
// handshake goroutine per Conn works the queue. When the queue is full the
// message is dropped and counted (Drops.HandshakeQueueFull): the sender
// retries, and under a flood the cookies (cookie.go) keep the queue short.
// Cookie messages are cheap and handled at once.
//
// A message that finds the handshake path idle (nothing queued, nothing
// being handled) is handled at once by the reader instead, within a small
// rate (handshakeInlineRate): the hand-off to the handshake goroutine
// wakes a second goroutine, which costs each message of a Conn's first
// handshake tens of microseconds here, while a few signature checks a
// second cost the data path little. Beyond that rate, and while the
// handshake goroutine is busy, messages queue as above, so a flood never
// holds up the data path for more than the rate allows. A Conn with a
// VerifyPeer callback always queues: the callback is the application's
// code, of unknown duration.

const (
	// handshakeQueueLen bounds the handshake messages waiting.
	handshakeQueueLen = 256
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

// handshakeElem is a queued handshake message, copied out of the packet
// that carried it (the packet goes back to the reader at once).
type handshakeElem struct {
	msg   [maxHandshakeMsg]byte
	n     int
	from  netip.AddrPort
	local netip.Addr
	v2    []byte // instead of msg: a protocol v2 key exchange datagram (queueV2)
}

// queueHandshake handles msg at once if the handshake path is idle, and
// otherwise puts it on the handshake queue, or drops it if the queue is
// full.
func (c *Conn) queueHandshake(msg []byte, from netip.AddrPort, local netip.Addr) {
	if len(msg) > maxHandshakeMsg {
		if msg[1] != typeFinal {
			c.stats.malformed.Add(1)
			return
		}
		// A final message with a large coalesced datagram (a jumbo
		// path): handled here, its lock waited for.
		c.hsMu.Lock()
		c.handleHandshake(msg, from, local)
		c.hsMu.Unlock()
		return
	}
	if msg[1] == typeHello && c.helloGate(msg, from, local) {
		return
	}
	// hsQueued, not len(hsQueue): a message taken off the queue but not
	// yet handled must not be overtaken either.
	if c.cfg.VerifyPeer == nil && c.hsQueued.Load() == 0 && c.hsMu.TryLock() {
		inline := c.hsInline.Allow()
		if inline {
			c.handleHandshake(msg, from, local)
		}
		c.hsMu.Unlock()
		if inline {
			return
		}
	}
	e := c.hsElems.Get().(*handshakeElem)
	e.n, e.from, e.local = copy(e.msg[:], msg), from, local
	q := c.hsQueue
	if msg[1] != typeHello {
		// A reply or a final message completes work already done (our
		// hello, our reply), and costs less than a hello's answer: it
		// goes first, so that a crowd of new hellos does not make the
		// handshakes under way time out.
		q = c.hsFinish
	}
	c.hsQueued.Add(1)
	select {
	case q <- e:
	default:
		c.hsQueued.Add(-1)
		c.hsElems.Put(e)
		c.stats.handshakeQueueFull.Add(1)
	}
}

// queueV2 puts a protocol v2 datagram carrying a plaintext key exchange
// (a signature check, and VerifyPeer, from any source on a v2 peer's IP)
// on the handshake queue, as a native hello is: handled by the handshake
// goroutine, dropped and counted (Drops.HandshakeQueueFull) when the queue
// is half full: v2 key exchanges pass no cookie check (the reference has
// none), and anyone who forges a v2 peer's IP could otherwise fill the
// queue and crowd out native handshakes. It copies b.
func (c *Conn) queueV2(src netip.AddrPort, b []byte) bool {
	if len(c.hsQueue) >= cap(c.hsQueue)/2 {
		c.stats.handshakeQueueFull.Add(1) // full: dropped before the copy
		return false
	}
	e := c.hsElems.Get().(*handshakeElem)
	e.from, e.local, e.v2 = src, netip.Addr{}, bytes.Clone(b)
	c.hsQueued.Add(1)
	select {
	case c.hsQueue <- e:
		return true
	default:
		c.hsQueued.Add(-1)
		e.v2 = nil
		c.hsElems.Put(e)
		c.stats.handshakeQueueFull.Add(1)
		return false
	}
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

// handshakeLoop works the handshake queue until Close.
func (c *Conn) handshakeLoop() {
	defer c.wg.Done()
	c.wg.Add(1) // counted while this one is: Close waits for both
	go c.cookieLoop()
	for {
		var e *handshakeElem
		select {
		case e = <-c.hsFinish: // first, when there is one
		default:
			select {
			case <-c.closed:
				return
			case e = <-c.hsFinish:
			case e = <-c.hsQueue:
			}
		}
		c.hsMu.Lock()
		if e.v2 != nil {
			c.receiveV2Deferred(e.from, e.v2)
			e.v2 = nil
		} else {
			c.handleHandshake(e.msg[:e.n], e.from, e.local)
		}
		c.hsQueued.Add(-1)
		c.hsMu.Unlock()
		c.hsElems.Put(e)
	}
}

// handleHandshake handles a hello, a reply or a final message; c.hsMu is
// held, so that one is handled at a time, as by one goroutine.
func (c *Conn) handleHandshake(msg []byte, from netip.AddrPort, local netip.Addr) {
	switch msg[1] {
	case typeHello:
		c.handleHello(msg, from, local)
	case typeReply:
		c.handleReply(msg)
	case typeFinal:
		c.handleFinal(msg, from, local)
	}
}

// helloGate applies the cookie rule (cookie.go) to a hello on the reader,
// before it is queued, and reports whether it is done with it: malformed,
// or, the Conn being under load, carrying no valid cookie for its source.
// Such a hello gets a cookie message, within its budget, sent by
// a goroutine of its own from a queue of its own (cookieQueueLen; full, the
// hello is dropped, Drops.HandshakeQueueFull). So under a flood of hellos
// from sources that do not answer cookies (forged ones), the handshake
// queue holds only hellos that proved their source, and replies: the flood
// costs the reader a parse and a table look-up per hello, and cannot crowd
// out a client that answered its cookie. (Before, every hello was queued
// and checked, and its cookie sent, by the one handshake goroutine: a flood
// of 87,000 a second filled the queue, dropped 58% of the hellos,
// legitimate ones alike, and a new client needed seconds of retries.)
func (c *Conn) helloGate(msg []byte, from netip.AddrPort, local netip.Addr) bool {
	m, err := noise.ParseHello(msg) // structure only: no cryptography
	if err != nil {
		c.stats.malformed.Add(1)
		return true
	}
	wall := c.cfg.now()
	if !c.cookies.underLoad(wall) {
		return false
	}
	if !allZero(m.Cookie) && c.cookies.valid(from, m.Cookie, wall) {
		// It proved its source; within the source's budget, on to the
		// queue (cookie.go: hellos with a valid cookie).
		if c.cookies.holders.allow(from, c.now()) {
			return false
		}
		c.stats.cookieLimit.Add(1)
		return true
	}
	if !c.cookies.budget.allow(from, c.now()) {
		c.stats.cookieLimit.Add(1)
		return true
	}
	select {
	case c.cookies.jobs <- cookieJob{from: from, local: local, index: m.SenderIndex}:
	default:
		c.stats.handshakeQueueFull.Add(1)
	}
	return true
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

// cookieQueueLen bounds the cookie messages waiting to be sent: a burst's
// worth (the goroutine sends them as they come; a read batch is 32
// datagrams); 4 KiB a Conn.
const cookieQueueLen = 64

// cookieJob is a cookie message to send: to from, from local, for the
// hello with sender index index.
type cookieJob struct {
	from  netip.AddrPort
	local netip.Addr
	index uint32
}

// cookieLoop sends the cookie messages helloGate queued, until Close.
func (c *Conn) cookieLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.closed:
			return
		case j := <-c.cookies.jobs:
			wall := c.cfg.now()
			cookie := c.cookies.make(j.from, wall)
			c.stats.cookiesSent.Add(1)
			c.sendRawFrom(j.from, j.local, noise.CookieMsg(j.index, cookie[:]))
		}
	}
}
