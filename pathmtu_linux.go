//go:build !vaultudp_portable

package vaultudp

import (
	"net"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"
)

// routeMTU returns the MTU of the route to addr as the kernel knows it
// (including what path MTU discovery learned): a UDP socket connected to
// addr (no datagram is sent) and getsockopt IP_MTU or IPV6_MTU, as
// quic-go and wireguard-go read it. ok is false if the kernel will not say.
// The socket is a bare file descriptor, not a net.UDPConn: it is never read
// or written, and the runtime poller's registration would cost as much again
// as the lookup, on the path of every handshake.
func routeMTU(addr netip.AddrPort) (mtu int, ok bool) {
	var sa unix.Sockaddr
	domain, level, opt := unix.AF_INET, unix.IPPROTO_IP, unix.IP_MTU
	if a := addr.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	} else {
		domain, level, opt = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_MTU
		sa6 := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			zone, err := netInterfaceIndex(z)
			if err != nil {
				return 0, false
			}
			sa6.ZoneId = zone
		}
		sa = sa6
	}
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return 0, false
	}
	mtu, err = unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return 0, false
	}
	return mtu, mtu >= MinMTU
}

// netInterfaceIndex returns the index of the interface an IPv6 zone names,
// by name or number, as net.Dial reads a zone.
func netInterfaceIndex(zone string) (uint32, error) {
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}

// routeCacheTTL is 0: on Linux routeMTU is cheap and current, and is
// asked every time (pathmtu.go).
const routeCacheTTL = 0
