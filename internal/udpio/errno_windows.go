//go:build windows

package udpio

import (
	"syscall"

	"golang.org/x/sys/windows"
)

// sysErrnos returns the rules of Winsock UDP sockets, from the error
// list of WSARecvFrom
// (https://learn.microsoft.com/en-us/windows/win32/api/winsock2/nf-winsock2-wsarecvfrom)
// and WSASendTo
// (https://learn.microsoft.com/en-us/windows/win32/api/winsock2/nf-winsock2-wsasendto):
//
//   - WSAECONNRESET: "For a UDP datagram socket, this error would indicate
//     that a previous send operation resulted in an ICMP Port Unreachable
//     message." WSAENETRESET: "For a datagram socket, this error indicates
//     that the time to live has expired" (an ICMP Time Exceeded). Both are
//     about an earlier send, not the socket, which reads on. Go turns both
//     reports off on every *net.UDPConn it makes (SIO_UDP_CONNRESET and
//     SIO_UDP_NETRESET set to FALSE in net/fd_windows.go's netFD.init, see
//     https://go.dev/issue/5834 and https://go.dev/issue/68614; the ioctls
//     are described under
//     https://learn.microsoft.com/en-us/windows/win32/winsock/winsock-ioctls,
//     and wireguard-go's and Tailscale's Windows sockets turn them off the
//     same way), so a Socket over a *net.UDPConn does not see them; a
//     PacketConn made otherwise (a socket of the caller's, through
//     net.FilePacketConn, say) may, and a read that fails with one is read
//     again (Transient).
//   - WSAEMSGSIZE on a read: "The message was too large to fit into the
//     specified buffer and (for unreliable protocols only) any trailing
//     portion of the message that did not fit into the buffer has been
//     discarded." That is a datagram cut to the buffer, which Unix
//     returns with no error: the Reader returns it marked Truncated (Go's
//     own net tests expect the error on Windows, TestUDPReadSizeError).
//     On a write it is a datagram larger than the socket takes, which
//     the Socket returns matching syscall.EMSGSIZE too (tooLargeError),
//     as on Unix. quic-go tells the same error apart (isRecvMsgSizeErr and
//     isSendMsgSizeErr in sys_conn_df_windows.go; its transport.go reads
//     on after a read that fails with it).
//   - WSAENOBUFS: "No buffer space is available": the system short of
//     memory for a moment.
func sysErrnos() *errnoRules {
	return &windowsRules
}

// windowsRules is constant: never written after initialisation.
var windowsRules = errnoRules{
	transient: []syscall.Errno{windows.WSAECONNRESET, windows.WSAENETRESET, windows.WSAENOBUFS},
	msgSize:   windows.WSAEMSGSIZE,
}
