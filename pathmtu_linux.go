package vaultudp

import (
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// routeMTU returns the MTU of the route to addr as the kernel knows it
// (including what path MTU discovery learned): a UDP socket connected to
// addr (no datagram is sent) and getsockopt IP_MTU or IPV6_MTU, as
// quic-go and wireguard-go read it. ok is false if the kernel will not say.
func routeMTU(addr netip.AddrPort) (mtu int, ok bool) {
	network, level, opt := "udp4", unix.IPPROTO_IP, unix.IP_MTU
	if addr.Addr().Is6() {
		network, level, opt = "udp6", unix.IPPROTO_IPV6, unix.IPV6_MTU
	}
	uc, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return 0, false
	}
	defer uc.Close()
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { mtu, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil || serr != nil {
		return 0, false
	}
	return mtu, mtu >= MinMTU
}
