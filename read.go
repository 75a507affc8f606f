package vaultudp

import (
	"net"
	"net/netip"
	"os"
)

// The application's read methods. Each takes the next datagram that
// receive (receive.go) queued for it, or, when the socket allows it and no
// other goroutine does, reads the socket itself (reader.go), so that a
// datagram reaches a blocked reader with no hand-off between goroutines.

// ReadFrom reads the next datagram that passed every check into b and
// returns its length and source. As with *net.UDPConn, a datagram longer
// than b is cut to len(b) without an error, and a read error of the
// socket is returned (but for those it recovers from by itself, such as
// an ICMP report of an earlier send: readerr.go).
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// ReadFromUDPAddrPort is ReadFrom without the address allocation.
func (c *Conn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	if !c.ok() {
		return 0, netip.AddrPort{}, errZeroConn("read")
	}
	if c.isClosed() {
		return 0, netip.AddrPort{}, c.opError("read", nil, net.ErrClosed)
	}
	if isClosed(c.readDeadline.wait()) {
		// As on *net.UDPConn, a deadline that has passed fails the read
		// even when a datagram waits (the select below would pick either).
		return 0, netip.AddrPort{}, c.opError("read", nil, os.ErrDeadlineExceeded)
	}
	direct := c.directToken()
	select {
	case direct <- struct{}{}:
		// This goroutine reads the socket itself (reader.go); others
		// wait here for what it queues, or for their turn.
		p, err := c.readDirect(&c.own)
		<-direct
		if err != nil {
			return 0, netip.AddrPort{}, c.readError(err)
		}
		n, from := c.take(p, b)
		return n, from, nil
	case p := <-c.recvQ:
		n, from := c.take(p, b)
		return n, from, nil
	case err := <-c.readErr:
		return 0, netip.AddrPort{}, err // the socket fails (readerr.go)
	case <-c.closed:
		return 0, netip.AddrPort{}, c.opError("read", nil, net.ErrClosed)
	case <-c.readDeadline.wait():
		return 0, netip.AddrPort{}, c.opError("read", nil, os.ErrDeadlineExceeded)
	}
}

// ReadFromUDP is ReadFrom returning a *net.UDPAddr, with the signature of
// (*net.UDPConn).ReadFromUDP, for code written against *net.UDPConn. As
// there, the address is nil when err is not nil, and a datagram longer
// than b is cut to len(b) without an error.
func (c *Conn) ReadFromUDP(b []byte) (int, *net.UDPAddr, error) {
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// Message is one datagram of ReadBatch or WriteBatch.
type Message struct {
	// Buf holds the datagram: ReadBatch reads into it (cutting, as
	// ReadFrom does, what does not fit), WriteBatch sends it.
	Buf []byte
	// N is the number of bytes ReadBatch read into Buf.
	N int
	// Addr is the source (ReadBatch) or the destination (WriteBatch).
	Addr netip.AddrPort
}

// ReadBatch reads up to len(ms) datagrams: it waits, as ReadFrom does, for
// the first, then takes those already received without waiting more. It
// returns how many it read. Deadlines and Close apply as to ReadFrom.
func (c *Conn) ReadBatch(ms []Message) (int, error) {
	if !c.ok() {
		return 0, errZeroConn("read")
	}
	if len(ms) == 0 {
		return 0, nil
	}
	n, from, err := c.ReadFromUDPAddrPort(ms[0].Buf)
	if err != nil {
		return 0, err
	}
	ms[0].N, ms[0].Addr = n, from
	k := 1
	for k < len(ms) {
		select {
		case p := <-c.recvQ:
			ms[k].N, ms[k].Addr = c.take(p, ms[k].Buf)
			k++
		default:
			return k, nil
		}
	}
	return k, nil
}

// take copies a queued datagram into b, cutting what does not fit as
// *net.UDPConn does, and gives its packet back.
func (c *Conn) take(p *packet, b []byte) (int, netip.AddrPort) {
	n, from := copy(b, p.data), p.from
	c.putPacket(p)
	return n, from
}
