package vaultudp

import (
	"net/netip"
)

// Handshake messages are handled off the data path, as wireguard-go's
// device/receive.go does: the reader that finds a hello or a reply (each
// costs a signature check, about a hundred times a datagram's open)
// copies it onto a bounded queue and goes on with the next datagram; one
// handshake goroutine per Conn works the queue. When the queue is full the
// message is dropped and counted (Drops.HandshakeQueueFull): the sender
// retries, and under a flood the cookies (cookie.go) keep the queue short.
// Cookie messages are cheap and handled at once.

const (
	// handshakeQueueLen bounds the handshake messages waiting.
	handshakeQueueLen = 256
	// maxHandshakeMsg is the longest hello or reply (maxVersions versions).
	maxHandshakeMsg = helloFixedLen + maxVersions + 64 + cookieLen
)

// handshakeElem is a queued handshake message, copied out of the packet
// that carried it (the packet goes back to the reader at once).
type handshakeElem struct {
	msg   [maxHandshakeMsg]byte
	n     int
	from  netip.AddrPort
	local netip.Addr
}

// queueHandshake puts msg on the handshake queue, or drops it if the
// queue is full.
func (c *Conn) queueHandshake(msg []byte, from netip.AddrPort, local netip.Addr) {
	if len(msg) > maxHandshakeMsg {
		c.stats.malformed.Add(1)
		return
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
			msg := e.msg[:e.n]
			switch msg[0] {
			case ctlHello:
				c.handleHello(msg, e.from, e.local)
			case ctlReply:
				c.handleReply(msg)
			}
			c.hsElems.Put(e)
		}
	}
}
