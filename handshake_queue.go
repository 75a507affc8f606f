package vaultudp

import (
	"net/netip"

	"golang.org/x/time/rate"
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
	if c.cfg.VerifyPeer == nil && len(c.hsQueue) == 0 && c.hsMu.TryLock() {
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
	select {
	case c.hsQueue <- e:
	default:
		c.hsElems.Put(e)
		c.stats.handshakeQueueFull.Add(1)
	}
}

// handshakeLoop works the handshake queue until Close.
func (c *Conn) handshakeLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.closed:
			return
		case e := <-c.hsQueue:
			c.hsMu.Lock()
			c.handleHandshake(e.msg[:e.n], e.from, e.local)
			c.hsMu.Unlock()
			c.hsElems.Put(e)
		}
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
