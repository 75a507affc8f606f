package vaultudp

import (
	"fmt"
	"net"
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

// checkMTU validates Config.MTU.
func checkMTU(mtu int) error {
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		return fmt.Errorf("%w: MTU %d outside [%d, %d]", ErrInvalidConfig, mtu, MinMTU, MaxMTU)
	}
	return nil
}
