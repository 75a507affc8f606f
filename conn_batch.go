package vaultudp

import (
	"net/netip"
	"os"
)

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
			ms[k].N = copy(ms[k].Buf, p.data)
			ms[k].Addr = p.from
			c.putPacket(p)
			k++
		default:
			return k, nil
		}
	}
	return k, nil
}

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
