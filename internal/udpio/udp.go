package udpio

import (
	"net"
	"sync/atomic"
	"time"
)

// MaxBatch is the most datagrams one Read returns.
const MaxBatch = 32

// ipv4Only reports whether a *net.UDPConn is an IPv4 socket: Go makes
// one for an IPv4 local address, and a dual-stack or IPv6 one for a
// wildcard or IPv6 address (whose LocalAddr is then IPv6).
func ipv4Only(uc *net.UDPConn) bool {
	return AddrPortOf(uc.LocalAddr()).Addr().Is4()
}

type udpSocket struct {
	uc    *net.UDPConn
	caps  Caps        // decided by New
	noGSO atomic.Bool // set for good when the device refuses GSO
	sys   sysSocket
}

func (s *udpSocket) Caps() Caps {
	c := s.caps
	if s.noGSO.Load() {
		c.GSO = false
	}
	return c
}

func (s *udpSocket) LocalAddr() net.Addr { return s.uc.LocalAddr() }
func (s *udpSocket) Close() error        { return s.uc.Close() }

func (s *udpSocket) SetReadDeadline(t time.Time) error { return s.uc.SetReadDeadline(t) }
func (s *udpSocket) SetReadBuffer(bytes int) error     { return s.uc.SetReadBuffer(bytes) }
func (s *udpSocket) SetWriteBuffer(bytes int) error    { return s.uc.SetWriteBuffer(bytes) }
