//go:build !linux

package vaultudp

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Off Linux, batch reads go through golang.org/x/net (which falls back to
// one datagram per call where the system has no recvmmsg), and there is
// no GSO.

type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

type sysSocket struct {
	batch batchConn
}

func (s *sysSocket) init(uc *net.UDPConn, v6 bool) {
	if v6 {
		s.batch = ipv6.NewPacketConn(uc)
	} else {
		s.batch = ipv4.NewPacketConn(uc)
	}
}

func (s *sysSocket) gso() bool                                                { return false }
func (s *sysSocket) gsoFailed(err error) bool                                 { return true }
func (s *sysSocket) writeGSO(*net.UDPConn, []byte, int, netip.AddrPort) error { return nil }

type sysReader struct {
	batch batchConn
	msgs  []ipv4.Message
}

func (r *sysReader) init(s *socket) {
	r.batch = s.sys.batch
	r.msgs = make([]ipv4.Message, readBatchSize)
	for i := range r.msgs {
		r.msgs[i].Buffers = make([][]byte, 1)
	}
}

func (r *sysReader) read(pkts []*packet) (int, error) {
	ms := r.msgs[:min(len(r.msgs), len(pkts))]
	for i := range ms {
		ms[i].Buffers[0] = pkts[i].buf
	}
	n, err := r.batch.ReadBatch(ms, 0)
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		p := pkts[i]
		p.data = p.buf[:ms[i].N]
		p.truncated = ms[i].N == len(p.buf)
		p.from = addrPortOf(ms[i].Addr)
		ms[i].Addr = nil
	}
	return n, nil
}
