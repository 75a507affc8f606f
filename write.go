package vaultudp

import (
	"errors"
	"net"
	"net/netip"
	"os"
)

// The application's write methods. Each checks its arguments, as
// *net.UDPConn's do, and hands the datagram to send (send.go), which seals
// it under the peer's session or keeps it for the handshake; the send
// queue (sendqueue.go) owns the socket's writes.

// WriteTo seals b and sends it to addr, a *net.UDPAddr. See Conn for what
// happens when the peer has no session yet.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if !c.ok() {
		return 0, errZeroConn("write")
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0, c.opError("write", addr, &net.AddrError{Err: "unsupported address type (want *net.UDPAddr)", Addr: addrString(addr)})
	}
	return c.WriteToUDPAddrPort(b, ua.AddrPort())
}

func addrString(a net.Addr) string {
	if a == nil {
		return "<nil>"
	}
	return a.String()
}

// WriteToUDPAddrPort is WriteTo with a netip.AddrPort.
func (c *Conn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if !c.ok() {
		return 0, errZeroConn("write")
	}
	return c.writeTo(b, addr, c.writeDeadline)
}

// writeTo is WriteToUDPAddrPort under the write deadline wd: the Conn's,
// or a ConnTo net.Conn's own (dial.go).
func (c *Conn) writeTo(b []byte, addr netip.AddrPort, wd *deadline) (int, error) {
	if c.sock.Load().Caps().IPv4Only && addr.Addr().Is6() && !addr.Addr().Is4In6() {
		// An IPv4 socket cannot reach it: *net.UDPConn's error, at once
		// (the handshake would otherwise wait for nothing).
		return 0, c.opError("write", net.UDPAddrFromAddrPort(addr), &net.AddrError{Err: "non-IPv4 address", Addr: addr.Addr().String()})
	}
	if err := c.send(b, normAddr(addr), wd); err != nil {
		if oe, ok := err.(*net.OpError); ok {
			err = oe.Err // the socket's own: one *net.OpError, as *net.UDPConn's
		}
		return 0, c.opError("write", net.UDPAddrFromAddrPort(addr), err)
	}
	return len(b), nil
}

// WriteToUDP is WriteTo with a *net.UDPAddr, with the signature of
// (*net.UDPConn).WriteToUDP. A nil addr fails with a *net.OpError, as
// there ("missing address"), and sends nothing.
func (c *Conn) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	if addr == nil {
		return 0, c.opError("write", nil, errMissingAddress)
	}
	return c.WriteToUDPAddrPort(b, addr.AddrPort())
}

// errMissingAddress is the error of a write without an address; its text
// is that of the net package's.
var errMissingAddress = errors.New("missing address")

// WriteBatch seals and sends ms in order and returns how many were sent;
// on an error, the datagrams before the failing one were sent and none
// after it. Each datagram is what WriteTo would send (the same size rule,
// MaxPayloadTo, and the same counters), and none overtakes a datagram
// written before it. Consecutive datagrams to one peer with a session go
// out segmented in one system call where the kernel has UDP GSO (with the
// default padding they all have the same length on the wire, which is
// what GSO needs).
func (c *Conn) WriteBatch(ms []Message) (int, error) {
	if !c.ok() {
		return 0, errZeroConn("write")
	}
	for i := 0; i < len(ms); {
		to := normAddr(ms[i].Addr)
		j := i + 1
		for j < len(ms) && j-i < maxBatchRun && normAddr(ms[j].Addr) == to {
			j++
		}
		n, err := c.writeRun(ms[i:j], to)
		if err != nil {
			return i + n, c.opError("write", nil, err)
		}
		i = j
	}
	return len(ms), nil
}

// maxBatchRun is the most datagrams sealed into one run buffer.
const maxBatchRun = 64

// writeRun sends datagrams to one destination: sealed into one buffer and
// handed to the send queue as a train (transmitTrain) when the peer has a
// session, and otherwise one by one through WriteTo's path, which queues
// them for the handshake.
func (c *Conn) writeRun(ms []Message, to netip.AddrPort) (int, error) {
	if c.isClosed() {
		return 0, ErrClosed
	}
	if isClosed(c.writeDeadline.wait()) {
		return 0, os.ErrDeadlineExceeded
	}
	var s *session
	p, err := c.peerFor(to, lookupOnly)
	if err == nil && p != nil && p.policy() != Plaintext {
		var err error
		if s, to, err = c.acquireSession(p); err != nil {
			return 0, err
		}
		if s == nil {
			p.mu.Unlock() // acquireSession keeps it held without a session
		}
	}
	if s == nil {
		for k := range ms {
			if err := c.send(ms[k].Buf, to, c.writeDeadline); err != nil {
				return k, err
			}
		}
		return len(ms), nil
	}
	bp := c.runBufs.Get().(*[]byte)
	defer c.runBufs.Put(bp)
	buf := (*bp)[:0]
	size := -1 // the common sealed length of the train in buf
	sent := 0
	// flush sends buf[:end], datagrams ms[sent:k], as one train; on an
	// error, sent counts those of them that went out.
	flush := func(k, end int) error {
		var err error
		if end > 0 {
			var n int
			n, err = c.transmitTrain(buf[:end], size, to, s.source(), c.writeDeadline)
			if err != nil {
				k = sent + n
			}
		}
		for _, m := range ms[sent:k] {
			c.countSent(p, len(m.Buf))
		}
		sent, buf, size = k, buf[:0], -1
		return err
	}
	for k := range ms {
		off := len(buf)
		out, err := c.appendSealed(buf, s, ms[k].Buf, true)
		if err != nil {
			if ferr := flush(k, off); ferr != nil {
				err = ferr
			}
			return sent, err
		}
		buf = out
		n := len(buf) - off
		switch {
		case size < 0:
			size = n
		case n < size:
			// A shorter datagram may end a GSO train: send it with it.
			if err := flush(k+1, len(buf)); err != nil {
				return sent, err
			}
		case n > size:
			// A longer one may not: send the train before it, and start
			// the next with it.
			if err := flush(k, off); err != nil {
				return sent, err
			}
			buf, size = buf[:copy(buf[:n], buf[off:off+n])], n
		}
	}
	if err := flush(len(ms), len(buf)); err != nil {
		return sent, err
	}
	return len(ms), nil
}
