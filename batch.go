package vaultudp

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// readBatchSize is the number of datagrams one recvmmsg call may return.
const readBatchSize = 32

// batchConn is what ipv4.PacketConn and ipv6.PacketConn have in common
// (their Message types are both x/net/internal/socket.Message).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// socket is the datagram I/O beneath a Conn: batch I/O through
// recvmmsg/sendmmsg when the PacketConn is a *net.UDPConn, one datagram
// per call through the net.PacketConn methods otherwise (an in-memory
// PacketConn from vaulttest, say).
type socket struct {
	pc    net.PacketConn
	udp   *net.UDPConn // nil unless pc is one
	batch batchConn    // nil unless udp is set
	ipv6  bool         // the socket may carry IPv6 (udp6, or dual-stack udp)
	laddr net.Addr
}

func newSocket(pc net.PacketConn) *socket {
	s := &socket{pc: pc, laddr: pc.LocalAddr()}
	if ua, ok := s.laddr.(*net.UDPAddr); ok {
		ip, _ := netip.AddrFromSlice(ua.IP)
		s.ipv6 = ua.IP == nil || !ip.Unmap().Is4()
	} else {
		s.ipv6 = true // unknown: assume the larger header
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		s.udp = uc
		if s.ipv6 {
			s.batch = ipv6.NewPacketConn(uc)
		} else {
			s.batch = ipv4.NewPacketConn(uc)
		}
	}
	return s
}

// reader reads datagrams into packets, in batches where it can.
type reader struct {
	s    *socket
	msgs []ipv4.Message
}

func (s *socket) newReader() *reader {
	r := &reader{s: s}
	if s.batch != nil {
		r.msgs = make([]ipv4.Message, readBatchSize)
		for i := range r.msgs {
			r.msgs[i].Buffers = make([][]byte, 1)
		}
	}
	return r
}

// read fills pkts[:n] with datagrams (pkt.data set to the bytes read,
// pkt.from to the source) and returns n >= 1, or an error. A datagram that
// did not fit its buffer has pkt.truncated set.
func (r *reader) read(pkts []*packet) (int, error) {
	if r.s.batch == nil {
		p := pkts[0]
		n, addr, err := r.s.pc.ReadFrom(p.buf)
		if err != nil {
			return 0, err
		}
		p.data, p.truncated = p.buf[:n], n == len(p.buf)
		p.from = addrPortOf(addr)
		return 1, nil
	}
	ms := r.msgs[:min(len(r.msgs), len(pkts))]
	for i := range ms {
		ms[i].Buffers[0] = pkts[i].buf
	}
	n, err := r.s.batch.ReadBatch(ms, 0)
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		p := pkts[i]
		p.data = p.buf[:ms[i].N]
		p.truncated = ms[i].N == len(p.buf) || ms[i].Flags&msgTrunc != 0
		p.from = addrPortOf(ms[i].Addr)
		ms[i].Addr = nil
	}
	return n, nil
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

// writeBatch sends bufs[i] to addrs[i] and returns how many were sent.
func (s *socket) writeBatch(ms []ipv4.Message) (int, error) {
	if s.batch == nil {
		for i := range ms {
			if _, err := s.pc.WriteTo(ms[i].Buffers[0], ms[i].Addr); err != nil {
				return i, err
			}
		}
		return len(ms), nil
	}
	sent := 0
	for sent < len(ms) {
		n, err := s.batch.WriteBatch(ms[sent:], 0)
		sent += n
		if err != nil {
			return sent, err
		}
		if n == 0 {
			break
		}
	}
	return sent, nil
}
