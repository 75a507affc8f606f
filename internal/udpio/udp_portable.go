//go:build !linux || vaultudp_portable

package udpio

import (
	"net"
	"net/netip"
)

// The portable path: what every system with a *net.UDPConn has, and what
// Linux uses too when built with the vaultudp_portable tag, so that CI
// runs this code on every change. Reads are the UDPConn's
// ReadFromUDPAddrPort, one datagram per call; writes its
// WriteToUDPAddrPort. There is no GSO, GRO or packet info.
//
// Why not golang.org/x/net/ipv4's ReadBatch here, as before: off Linux it
// is no batch at all. x/net reads many datagrams per call only with
// recvmmsg, on Linux (internal/socket/rawconn_mmsg.go is built for linux
// alone); everywhere else its ReadBatch reads one datagram per call
// through recvmsg (rawconn_nommsg.go), and allocates a *net.UDPAddr for
// each. On Windows its recvmsg returns errNotImplemented
// (internal/socket/sys_windows.go, x/net v0.62.0), so that a reader over
// it never received a datagram. wireguard-go decides the same in
// conn/bind_std.go: ReadBatch on Linux and Android, one ReadMsgUDP per
// call elsewhere. (FreeBSD and NetBSD have recvmmsg too, but x/net's
// ReadBatch does not use it there, and neither does quic-go, whose
// sys_conn_oob.go batch on FreeBSD goes through the same one-datagram
// ReadBatch.)

// sysSocket holds the system's error rules: the UDPConn's methods are all
// the portable path uses of the socket.
type sysSocket struct {
	rules *errnoRules
}

// newUDP returns the Socket over uc.
func newUDP(uc *net.UDPConn) *udpSocket {
	return &udpSocket{uc: uc, caps: Caps{Deadlines: true, IPv4Only: ipv4Only(uc)}, sys: sysSocket{rules: sysErrnos()}}
}

func (s *udpSocket) WriteTo(b []byte, to netip.AddrPort, _ netip.Addr) error {
	_, err := s.uc.WriteToUDPAddrPort(b, to)
	return s.sys.rules.writeError(err)
}

func (s *udpSocket) WriteSegments(b []byte, size int, to netip.AddrPort, src netip.Addr) (int, error) {
	return writeEach(s, b, 0, size, to, src)
}

func (s *udpSocket) NewReader() Reader {
	return &portableReader{read: s.uc.ReadFromUDPAddrPort, rules: s.sys.rules}
}

// portableReader reads one datagram per call.
type portableReader struct {
	read  func([]byte) (int, netip.AddrPort, error) // the UDPConn's ReadFromUDPAddrPort
	rules *errnoRules
}

func (r *portableReader) Buffered() int { return 0 }
func (r *portableReader) Release()      {}

func (r *portableReader) Read(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	m := &ms[0]
	n, from, err := r.read(m.Buf)
	if err != nil {
		if !r.rules.isMsgSize(err) {
			return 0, err
		}
		// A datagram cut to the buffer (WSAEMSGSIZE on Windows): as on
		// Unix, it is returned marked; the system gives no source for it.
		m.N, m.Truncated, m.Addr, m.Local = min(n, len(m.Buf)), true, netip.AddrPort{}, netip.Addr{}
		return 1, nil
	}
	m.N, m.Truncated = n, n == len(m.Buf)
	m.Addr, m.Local = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), netip.Addr{}
	return 1, nil
}
