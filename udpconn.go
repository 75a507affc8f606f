package vaultudp

import (
	"errors"
	"net"
)

// ReadFromUDP is ReadFrom returning a *net.UDPAddr, with the signature of
// (*net.UDPConn).ReadFromUDP, for code written against *net.UDPConn. As
// there, the address is nil when err is not nil, and a datagram longer
// than b is cut to len(b) without an error.
func (c *Conn) ReadFromUDP(b []byte) (int, *net.UDPAddr, error) {
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// WriteToUDP is WriteTo with a *net.UDPAddr, with the signature of
// (*net.UDPConn).WriteToUDP. A nil addr fails with a *net.OpError, as
// there ("missing address"), and sends nothing.
func (c *Conn) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	if addr == nil {
		return 0, c.opError("write", nil, errMissingAddress)
	}
	return c.WriteToUDPAddrPort(b, addr.AddrPort())
}

// errMissingAddress is the error of a write without an address; its text
// is that of the net package's.
var errMissingAddress = errors.New("missing address")
