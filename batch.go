package vaultudp

import (
	"net"
	"net/netip"
)

// readBatchSize is the number of datagrams one recvmmsg call may return.
const readBatchSize = 32

// socket is the datagram I/O beneath a Conn: batch reads (recvmmsg) and
// segmented batch writes (UDP GSO) when the PacketConn is a *net.UDPConn
// on a system that has them (batch_linux.go), one datagram per call
// through the net.PacketConn methods otherwise (an in-memory PacketConn
// from vaulttest, say).
type socket struct {
	pc    net.PacketConn
	udp   *net.UDPConn // nil unless pc is one
	ipv6  bool         // the socket may carry IPv6 (udp6, or dual-stack udp)
	laddr net.Addr
	sys   sysSocket // the system-specific batch I/O state; zero without udp

	// dlUnknown is set until the Conn first sets the socket's read
	// deadline (direct.go keeps track of it from then on).
	dlUnknown bool
}

func newSocket(pc net.PacketConn) *socket {
	s := &socket{pc: pc, laddr: pc.LocalAddr(), dlUnknown: true}
	if ua, ok := s.laddr.(*net.UDPAddr); ok {
		ip, _ := netip.AddrFromSlice(ua.IP)
		s.ipv6 = ua.IP == nil || !ip.Unmap().Is4()
	} else {
		s.ipv6 = true // unknown: assume the larger header
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		s.udp = uc
		s.sys.init(uc, s.ipv6)
	}
	return s
}

// reader reads datagrams into packets, in batches where it can.
type reader struct {
	s   *socket
	sys sysReader
}

func (s *socket) newReader() *reader {
	r := &reader{s: s}
	if s.udp != nil {
		r.sys.init(s)
	}
	return r
}

// read fills pkts[:n] with datagrams (pkt.data set to the bytes read,
// pkt.from to the source) and returns n >= 1, or an error. A datagram that
// did not fit its buffer has pkt.truncated set.
func (r *reader) read(pkts []*packet) (int, error) {
	if r.s.udp != nil {
		return r.sys.read(pkts)
	}
	p := pkts[0]
	n, addr, err := r.s.pc.ReadFrom(p.buf)
	if err != nil {
		return 0, err
	}
	p.data, p.truncated = p.buf[:n], n == len(p.buf)
	p.from = addrPortOf(addr)
	return 1, nil
}

// addrPortOf returns the normalised AddrPort of a UDP address, or the zero
// AddrPort for anything else.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		return normAddr(ua.AddrPort())
	}
	return netip.AddrPort{}
}

// writeTo sends one datagram.
func (s *socket) writeTo(b []byte, to netip.AddrPort) error {
	if s.udp != nil {
		_, err := s.udp.WriteToUDPAddrPort(b, to)
		return err
	}
	_, err := s.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
	return err
}

// writeSegments sends n datagrams of size bytes each (the last may be
// shorter), laid out back to back in b, to one address: in one system call
// with UDP GSO where the kernel has it, one by one otherwise.
func (s *socket) writeSegments(b []byte, size int, to netip.AddrPort) error {
	if s.udp != nil && len(b) > size && s.sys.gso() {
		err := s.sys.writeGSO(s.udp, b, size, to)
		if err == nil || !s.sys.gsoFailed(err) {
			return err
		}
		// The kernel or the path refused GSO: fall back for good.
	}
	for len(b) > 0 {
		n := min(size, len(b))
		if err := s.writeTo(b[:n], to); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
