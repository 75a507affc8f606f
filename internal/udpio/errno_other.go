//go:build !windows

package udpio

import "syscall"

// sysErrnos returns the rules of Unix sockets (and of the wasm ports,
// whose syscall packages use the same names). An unconnected UDP socket
// reports no ICMP errors on reads; a connected one reports the next ICMP
// error of its destination on the next read or write (udp(7) on Linux,
// "ERRORS"; the BSDs and macOS alike): ECONNREFUSED for a closed port,
// EHOSTUNREACH or ENETUNREACH for the rest. ENOBUFS and ENOMEM
// are the system out of buffers for a moment. A datagram larger than the
// buffer is cut without an error (MSG_TRUNC in the flags), and a send too
// large is EMSGSIZE already.
func sysErrnos() *errnoRules {
	return &unixRules
}

// unixRules is constant: never written after initialisation.
var unixRules = errnoRules{
	transient: []syscall.Errno{
		syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH,
		syscall.ENOBUFS, syscall.ENOMEM,
	},
}
