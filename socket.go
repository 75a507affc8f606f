package vaultudp

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vaultudp/vaultudp/internal/udpio"
)

// readBatchSize is the number of datagrams one read of the socket may
// return.
const readBatchSize = udpio.MaxBatch

// socket is the datagram I/O beneath a Conn (internal/udpio: batch reads,
// GSO, packet info where the PacketConn and the system have them), and
// the Conn's own state of it.
type socket struct {
	udpio.Socket
	ipv6  bool // the socket may carry IPv6 (udp6, or dual-stack udp)
	laddr net.Addr
	self  netip.AddrPort // laddr as a peer key (send.go: writes to itself)

	// dlUnknown is set until the Conn first sets the socket's read
	// deadline (reader.go keeps track of it from then on).
	dlUnknown bool

	// rs is what reading the socket takes; set before the Conn uses s.
	rs *readSet
}

func newSocket(pc net.PacketConn) *socket {
	s := &socket{Socket: udpio.New(pc), laddr: pc.LocalAddr(), dlUnknown: true}
	s.self = normAddr(addrPortOf(s.laddr))
	if ua, ok := s.laddr.(*net.UDPAddr); ok {
		ip, _ := netip.AddrFromSlice(ua.IP)
		s.ipv6 = ua.IP == nil || !ip.Unmap().Is4()
	} else {
		s.ipv6 = true // unknown: assume the larger header
	}
	return s
}

// reader reads datagrams into packets, in batches where the socket can.
type reader struct {
	s  *socket
	r  udpio.Reader
	ms [readBatchSize]udpio.Message
}

func (s *socket) newReader() *reader {
	return &reader{s: s, r: s.NewReader()}
}

// read fills pkts[:n] with datagrams (pkt.data set to the bytes read,
// pkt.from to the source, pkt.local to the local address it came to where
// the socket tells) and returns n >= 1, or an error. A datagram that did
// not fit its buffer has pkt.truncated set.
func (r *reader) read(pkts []*packet) (int, error) {
	ms := r.ms[:min(len(pkts), len(r.ms))]
	for i := range ms {
		ms[i].Buf = pkts[i].buf
	}
	n, err := r.r.Read(ms)
	for i := 0; i < n; i++ {
		p, m := pkts[i], &ms[i]
		p.data, p.truncated = p.buf[:m.N], m.Truncated
		p.from, p.local = m.Addr, m.Local
		p.pre = preOpened{}
		if m.Whole != nil && len(m.Whole) <= udpMaxDatagram {
			// Larger than the packet's buffer, but received whole: a
			// buffer of its own (the rare path; it allocates).
			p.buf = make([]byte, len(m.Whole)+1)
			p.data, p.truncated = p.buf[:copy(p.buf, m.Whole)], false
		}
	}
	return n, err
}

// readSet is what reading a socket takes: a reader and the packets it
// reads into. A socket has one, which the goroutines that read it share,
// one at a time: its background reader, and application goroutines in
// ReadFrom, which take turns with it and with each other (reader.go). So a
// Conn has one set of receive buffers however it is read. The turns keep
// the holders apart; mu makes sure of it where they do not by themselves
// (a reader of a socket that Rebind has just replaced). The packets
// start few and grow to a whole batch (readBatchSize) once a read fills
// them all: a Conn that never has more than a datagram or two waiting
// does not allocate and zero 32 of them (and, where the socket has GRO, a
// 64 KiB buffer) for each goroutine that reads it.
type readSet struct {
	mu       sync.Mutex // held while reading into the set and handling what came
	batch    openBatch  // the last read, shared with the open workers (receive_workers.go)
	r        *reader
	pkts     []*packet
	full     bool // the last read filled pkts
	released bool // the socket is closed and the buffers given up (releaseReadSet)
}

// readSetStart is the packets a readSet starts with.
const readSetStart = 4

func (c *Conn) newReadSet(s *socket) *readSet {
	rs := &readSet{r: s.newReader(), pkts: make([]*packet, readSetStart, readBatchSize)}
	for i := range rs.pkts {
		rs.pkts[i] = c.getPacket()
	}
	return rs
}

// readInto reads into rs.pkts (see reader.read), first growing them to a
// whole batch if the last read filled them; rs.mu is held.
func (c *Conn) readInto(rs *readSet) (int, error) {
	if rs.released {
		return 0, net.ErrClosed
	}
	for rs.full && len(rs.pkts) < readBatchSize {
		rs.pkts = append(rs.pkts, c.getPacket())
	}
	n, err := rs.r.read(rs.pkts)
	rs.full = n == len(rs.pkts)
	return n, err
}

// releaseReadSet gives up rs's buffers, its socket being closed (by Close
// or Rebind): its packets go back to the Conn's free list, its reader's
// buffers to other readers (udpio). It waits for the goroutine reading
// with rs, if any, to leave, which it does at once: its read fails.
func (c *Conn) releaseReadSet(rs *readSet) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.released {
		return
	}
	rs.released = true
	rs.r.r.Release()
	for _, p := range rs.pkts {
		c.putPacket(p)
	}
	rs.pkts = nil
}

// addrPortOf returns the normalised AddrPort of a UDP address, or the zero
// AddrPort for anything else.
func addrPortOf(a net.Addr) netip.AddrPort { return udpio.AddrPortOf(a) }

// writeTo sends one datagram, from the address the system chooses.
func (s *socket) writeTo(b []byte, to netip.AddrPort) error {
	return s.WriteTo(b, to, netip.Addr{})
}

// packet is a buffer on its way from the socket to ReadFrom.
type packet struct {
	buf       []byte
	data      []byte // the datagram within buf
	from      netip.AddrPort
	local     netip.Addr // the local address it came to, where the socket tells (udpio.Caps.PacketInfo)
	truncated bool

	// pre is set for a sealed datagram an open worker decrypted ahead of
	// its turn (receive_workers.go); receiveSealed takes it from there.
	pre    preOpened
	opened atomic.Bool // in a shared read: pre is set, or left unset for receive to do it all
}

func (c *Conn) getPacket() *packet {
	select {
	case p := <-c.freePkts:
		return p
	default:
		return &packet{buf: make([]byte, c.bufSize)}
	}
}

func (c *Conn) putPacket(p *packet) {
	if len(p.buf) != c.bufSize {
		return // one made for a datagram larger than the MTU's: not kept, so the free list stays small
	}
	p.data, p.from, p.local, p.truncated = nil, netip.AddrPort{}, netip.Addr{}, false
	p.pre = preOpened{}
	select {
	case c.freePkts <- p:
	default: // more than ever wait at once: let it go
	}
}
