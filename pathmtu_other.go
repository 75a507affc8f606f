//go:build !linux || vaultudp_portable

package vaultudp

import (
	"net"
	"net/netip"
	"time"
)

// routeCacheTTL is how long a route's MTU is remembered (pathmtu.go): a
// lookup here costs as much as half a handshake, and what it finds, the
// interface's MTU, changes only with the routes and interfaces.
const routeCacheTTL = 30 * time.Second

// routeMTU returns the MTU of the interface the route to addr leaves by:
// the local address a connected UDP socket gets (no datagram is sent),
// then the interface holding it. ok is false if none is found.
func routeMTU(addr netip.AddrPort) (mtu int, ok bool) {
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return 0, false
	}
	local := uc.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	uc.Close()
	ifs, err := net.Interfaces()
	if err != nil {
		return 0, false
	}
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == local {
				return ifi.MTU, ifi.MTU >= MinMTU
			}
		}
	}
	return 0, false
}
