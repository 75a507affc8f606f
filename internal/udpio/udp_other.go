//go:build !linux

package udpio

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Off Linux, reads go through golang.org/x/net's ReadBatch (which reads
// one datagram per call where the system has no recvmmsg), and there is
// no GSO, GRO or packet info.

type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

type sysSocket struct {
	batch batchConn
}

func newUDP(uc *net.UDPConn) *udpSocket {
	s := &udpSocket{uc: uc, caps: Caps{Deadlines: true, IPv4Only: ipv4Only(uc)}}
	ap := AddrPortOf(uc.LocalAddr())
	if ap.Addr().Is4() {
		s.sys.batch = ipv4.NewPacketConn(uc)
	} else {
		s.sys.batch = ipv6.NewPacketConn(uc)
	}
	return s
}

func (s *udpSocket) WriteTo(b []byte, to netip.AddrPort, _ netip.Addr) error {
	_, err := s.uc.WriteToUDPAddrPort(b, to)
	return err
}

func (s *udpSocket) WriteSegments(b []byte, size int, to netip.AddrPort, src netip.Addr) (int, error) {
	return writeEach(s, b, 0, size, to, src)
}

type otherReader struct {
	batch batchConn
	msgs  []ipv4.Message
}

func (s *udpSocket) NewReader() Reader {
	r := &otherReader{batch: s.sys.batch, msgs: make([]ipv4.Message, MaxBatch)}
	for i := range r.msgs {
		r.msgs[i].Buffers = make([][]byte, 1)
	}
	return r
}

func (r *otherReader) Buffered() int { return 0 }
func (r *otherReader) Release()      {}

func (r *otherReader) Read(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	xs := r.msgs[:min(len(r.msgs), len(ms))]
	for i := range xs {
		xs[i].Buffers[0] = ms[i].Buf
	}
	n, err := r.batch.ReadBatch(xs, 0)
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		m := &ms[i]
		m.N = xs[i].N
		m.Truncated = xs[i].N == len(m.Buf)
		m.Addr, m.Local = AddrPortOf(xs[i].Addr), netip.Addr{}
		xs[i].Addr = nil
	}
	return n, nil
}
