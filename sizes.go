package vaultudp

import (
	"encoding/binary"
	"net/netip"
)

// Datagram sizes per peer (PROTOCOL.md section 6). Each side tells its
// peer, in the session parameters it sends sealed at the start of every
// session (the token message, reset.go), the largest datagram it
// receives. Padding to the MTU pads to the smaller of the path MTU to that
// peer (the route's, or Config.MTU) and what the peer receives, so every
// datagram to a peer has one length, whatever MTU either host has. A
// datagram above that target is still sent, up to what the peer receives
// (unless Config.StrictMTU), padded to a multiple of the target; IP
// fragments it where the path needs it, as it does a *net.UDPConn's.

const (
	// udpMaxDatagram is the largest UDP payload (over IPv4).
	udpMaxDatagram = 65507

	// minAccept is the largest datagram every Conn receives, assumed of a
	// peer until it says: receive buffers hold at least a DefaultMTU IPv4
	// datagram (recvBufSize).
	minAccept = DefaultMTU - ipv4HeaderLen - udpHeaderLen

	// The session parameters, each length 2, uint16 big endian:
	// extMaxDatagram, the largest datagram the sender receives without IP
	// fragmentation (its own MTU's; what padding may fill), and
	// extMaxReassembled, the largest it receives at all (fragmented).
	extMaxDatagram    = 1
	extMaxReassembled = 2
)

// accept is the largest datagram this Conn receives without IP
// fragmentation, as it states it: its receive buffers (its MTU's IPv4
// datagram, at least 1472), less the byte that tells a datagram that did
// not fit.
func (c *Conn) accept() int { return c.bufSize - 1 }

// acceptWhole is the largest datagram this Conn receives at all: the UDP
// maximum on a socket that reads with UDP GRO (its 64 KiB buffers take any
// datagram whole, and one larger than a packet's buffer gets one of its
// own), accept otherwise.
func (c *Conn) acceptWhole() int {
	if c.sock.Load().Caps().GRO {
		return udpMaxDatagram
	}
	return c.accept()
}

// pathDatagram returns the largest datagram that reaches addr without IP
// fragmentation: Config.MTU's if set, else the route's MTU (loopback's on
// loopback), else the Conn's default.
func (c *Conn) pathDatagram(addr netip.AddrPort) int {
	if c.cfg.MTU != 0 {
		return c.datagram
	}
	mtu, ok := c.routes.mtu(addr)
	if !ok {
		return c.datagram
	}
	return min(datagramSize(min(mtu, MaxMTU), !addr.Addr().Unmap().Is4()), udpMaxDatagram)
}

// peerAccept is what s's peer receives: what it said, or minAccept.
func (s *session) peerAcceptOr() int {
	if n := int(s.peerAccept.Load()); n > 0 {
		return n
	}
	return minAccept
}

// padTarget is the length PadMTU gives datagrams under s.
func (c *Conn) padTarget(s *session) int {
	path := s.path
	if path == 0 {
		path = c.datagram
	}
	return min(path, s.peerAcceptOr())
}

// sendLimit is the largest datagram sent under s.
func (c *Conn) sendLimit(s *session) int {
	if c.cfg.StrictMTU {
		return c.padTarget(s)
	}
	whole := int(s.peerWhole.Load())
	return min(max(whole, s.peerAcceptOr()), udpMaxDatagram)
}

// paddedSize is the length of a sealed datagram whose natural length is
// n, padded by p towards target t without passing limit.
func (p Padding) paddedSize(n, t, limit int) int {
	switch {
	case n <= t:
		return p.wireSize(n, t)
	case p == PadMTU:
		// Above the target: a multiple of it, so that the length says
		// little more than "large".
		return min((n+t-1)/t*t, limit)
	}
	return p.wireSize(n, limit)
}

// appendParams appends the session parameters this Conn states.
func (c *Conn) appendParams(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(append(b, extMaxDatagram, 2), uint16(min(c.accept(), 65535)))
	return binary.BigEndian.AppendUint16(append(b, extMaxReassembled, 2), uint16(min(c.acceptWhole(), 65535)))
}

// readParams reads session parameters from the peer into s. Unknown
// types are skipped; a parameter that runs past the end ends the list.
func readParams(s *session, b []byte) {
	for len(b) >= 2 {
		typ, n := b[0], int(b[1])
		if len(b) < 2+n {
			return
		}
		v := b[2 : 2+n]
		if n == 2 {
			m := int(binary.BigEndian.Uint16(v))
			switch {
			case typ == extMaxDatagram && m >= minAccept:
				s.peerAccept.Store(int32(m))
			case typ == extMaxReassembled && m >= minAccept:
				s.peerWhole.Store(int32(m))
			}
		}
		b = b[2+n:]
	}
}

// MaxPayloadTo returns the largest datagram WriteTo sends to addr now:
// what the peer receives (or, without a session yet, what every Conn
// receives), less vaultudp's overhead; with Config.StrictMTU, what fits
// the path MTU to it.
func (c *Conn) MaxPayloadTo(addr netip.AddrPort) int {
	if !c.ok() {
		return 0
	}
	addr = normAddr(addr)
	if p, _ := c.peerFor(addr, lookupOnly); p != nil {
		if s := p.kp.current(); s != nil {
			return maxPayloadFor(c.sendLimit(s))
		}
	}
	if c.cfg.StrictMTU {
		return maxPayloadFor(min(c.pathDatagram(addr), minAccept))
	}
	return maxPayloadFor(minAccept)
}

// queueLimit is the largest datagram that may wait for a handshake.
func (c *Conn) queueLimit() int {
	if c.cfg.StrictMTU {
		return maxPayloadFor(min(c.datagram, minAccept))
	}
	return maxPayloadFor(minAccept)
}
