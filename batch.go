package vaultudp

import (
	"net"
	"net/netip"

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
	// deadline (direct.go keeps track of it from then on).
	dlUnknown bool
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
		if m.Whole != nil && len(m.Whole) <= udpMaxDatagram {
			// Larger than the packet's buffer, but received whole: a
			// buffer of its own (the rare path; it allocates).
			p.buf = make([]byte, len(m.Whole)+1)
			p.data, p.truncated = p.buf[:copy(p.buf, m.Whole)], false
		}
	}
	return n, err
}

// receiveBuffered hands to receive what r holds from its last read (a
// GRO read may bring in more datagrams than fit pkts), so that nothing
// waits in r when its goroutine leaves the socket.
func (c *Conn) receiveBuffered(r *reader, pkts []*packet) {
	for r.r.Buffered() > 0 {
		n, err := r.read(pkts)
		if err != nil {
			return
		}
		for i := 0; i < n; i++ {
			if c.receive(pkts[i]) {
				pkts[i] = c.getPacket()
			}
		}
	}
}

// addrPortOf returns the normalised AddrPort of a UDP address, or the zero
// AddrPort for anything else.
func addrPortOf(a net.Addr) netip.AddrPort { return udpio.AddrPortOf(a) }

// writeTo sends one datagram, from the address the system chooses.
func (s *socket) writeTo(b []byte, to netip.AddrPort) error {
	return s.WriteTo(b, to, netip.Addr{})
}

// setLocal records a, the local address an authenticated datagram from p
// arrived at, for answers to leave from (nothing where the socket does not
// tell). It allocates only when the address changes.
func (p *peer) setLocal(a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if cur := p.local.Load(); cur == nil || *cur != a {
		na := new(netip.Addr)
		*na = a
		p.local.Store(na)
	}
}

// localAddr returns the local address datagrams to p leave from: where
// its last authenticated datagram arrived, or the zero Addr (the system's
// choice).
func (p *peer) localAddr() netip.Addr {
	if a := p.local.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// source returns the local address datagrams sealed under s leave from
// (its peer's localAddr).
func (s *session) source() netip.Addr {
	if s.peer == nil {
		return netip.Addr{}
	}
	return s.peer.localAddr()
}
