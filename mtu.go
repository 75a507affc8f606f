package vaultudp

import (
	"fmt"
	"net"
)

// Per-datagram overhead, in bytes. A sealed datagram on the wire is
//
//	IP header (20 or 40) | UDP header (8) | sealed header (16) |
//	envelope (payload framing + payload [+ padding]) | Poly1305 tag (16)
//
// so the largest payload is the path MTU minus all of it (MaxPayload,
// MaxPayloadTo).
const (
	ipv4HeaderLen   = 20
	ipv6HeaderLen   = 40
	udpHeaderLen    = 8
	sealedHeaderLen = 16
	tagLen          = 16
	sealedOverhead  = sealedHeaderLen + tagLen

	// envelopeFraming is the envelope's fixed part around a payload: the
	// map header (1), "v" and its value (3), the "p" key (2). The bin
	// header (2, 3 or 5 bytes) comes on top.
	envelopeFraming = 1 + 3 + 2

	// DefaultMTU is used when no up, non-loopback interface reports an
	// MTU (a container with only a loopback, say): the Ethernet MTU.
	DefaultMTU = 1500

	// MinMTU is the smallest MTU Config.MTU accepts: IPv4's minimum
	// datagram size that every host must accept.
	MinMTU = 576

	// MaxMTU is the largest MTU Config.MTU accepts (the IPv4 total length
	// field).
	MaxMTU = 65535
)

// netInterface is what MTU discovery needs to know of an interface.
type netInterface struct {
	Name     string
	MTU      int
	Up       bool
	Loopback bool
}

// interfaceLister lists the host's interfaces. Conns use
// systemInterfaces; tests inject fake lists.
type interfaceLister func() ([]netInterface, error)

// stdInterfaces lists the host's interfaces through the standard library
// (netlink on Linux). gopsutil's list, used before, reads each
// interface's addresses too: four times the cost (about 0.5 ms) of every
// Listen, for nothing the MTU needs. systemInterfaces is this, but on
// Linux (mtu_linux.go).
func stdInterfaces() ([]netInterface, error) {
	list, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]netInterface, 0, len(list))
	for _, ifi := range list {
		out = append(out, netInterface{
			Name:     ifi.Name,
			MTU:      ifi.MTU,
			Up:       ifi.Flags&net.FlagUp != 0,
			Loopback: ifi.Flags&net.FlagLoopback != 0,
		})
	}
	return out, nil
}

// discoverMTU returns the smallest MTU of the up, non-loopback interfaces
// that list reports, and the interface it came from. With no such
// interface, or when listing fails, it returns DefaultMTU and an empty
// name. MTUs outside [MinMTU, MaxMTU] are ignored (a tunnel reporting 0,
// say) rather than trusted.
func discoverMTU(list interfaceLister) (mtu int, iface string) {
	ifs, err := list()
	if err != nil {
		return DefaultMTU, ""
	}
	for _, ifi := range ifs {
		if !ifi.Up || ifi.Loopback || ifi.MTU < MinMTU || ifi.MTU > MaxMTU {
			continue
		}
		if mtu == 0 || ifi.MTU < mtu {
			mtu, iface = ifi.MTU, ifi.Name
		}
	}
	if mtu == 0 {
		return DefaultMTU, ""
	}
	return mtu, iface
}

// datagramSize is the largest UDP payload (the whole sealed datagram) that
// fits the MTU without fragmentation.
func datagramSize(mtu int, ipv6 bool) int {
	if ipv6 {
		return mtu - ipv6HeaderLen - udpHeaderLen
	}
	return mtu - ipv4HeaderLen - udpHeaderLen
}

// maxPayloadFor is the largest user datagram that seals into at most
// datagram bytes: the exact inverse of the sealed length arithmetic.
func maxPayloadFor(datagram int) int {
	room := datagram - sealedOverhead - envelopeFraming
	// A longer payload may need a wider bin header: step down at most
	// three times.
	n := room - 2
	for n >= 0 && n+binHeaderLen(n) > room {
		n--
	}
	return max(n, -1)
}

// checkMTU validates Config.MTU.
func checkMTU(mtu int) error {
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		return fmt.Errorf("%w: MTU %d outside [%d, %d]", ErrInvalidConfig, mtu, MinMTU, MaxMTU)
	}
	return nil
}
