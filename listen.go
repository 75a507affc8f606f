package vaultudp

import (
	"fmt"
	"net"
)

// Listen opens a UDP socket on address for network "udp", "udp4" or
// "udp6", as net.ListenPacket does, and returns a Conn over it. A nil
// config means every default (see Config).
func Listen(network, address string, config *Config) (*Conn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	pc, err := net.ListenPacket(network, address)
	if err != nil {
		return nil, err
	}
	s := newSocket(pc)
	setSocketBuffers(s)
	c, err := newConn(s, config)
	if err != nil {
		pc.Close()
		return nil, err
	}
	c.network = network
	return c, nil
}

// SocketBuffer is the receive and send buffer size Listen and Rebind ask
// for (the kernel may cap it: net.core.rmem_max on Linux). Bursts of
// datagrams that outrun the reader wait there instead of being dropped by
// the kernel, as quic-go and wireguard-go do with similar sizes. Wrap
// leaves the caller's socket as it is.
const SocketBuffer = 4 << 20

// bufferSetter is a socket whose kernel buffers can be set (a
// *net.UDPConn, a udpio.Socket).
type bufferSetter interface {
	SetReadBuffer(bytes int) error
	SetWriteBuffer(bytes int) error
}

func setSocketBuffers(s bufferSetter) {
	s.SetReadBuffer(SocketBuffer) // best effort: a smaller buffer still works
	s.SetWriteBuffer(SocketBuffer)
}

// Wrap returns a Conn over a PacketConn the caller made. It uses batch
// I/O when pc is a *net.UDPConn, and pc's ReadFrom and WriteTo otherwise
// (an in-memory PacketConn works too, if it reports *net.UDPAddr
// addresses). The Conn owns pc from then on: Close closes it.
func Wrap(pc net.PacketConn, config *Config) (*Conn, error) {
	if pc == nil {
		return nil, fmt.Errorf("%w: nil PacketConn", ErrInvalidConfig)
	}
	return newConn(newSocket(pc), config)
}

// Rebind moves the Conn to a new local address (a new port, say) without
// losing its sessions: datagrams go out from the new socket at once, and
// each peer moves to the new address once it has validated it (one round
// trip: a path challenge, PROTOCOL.md section 5.12). It works on Conns made
// by Listen.
func (c *Conn) Rebind(address string) error {
	if !c.ok() {
		return errZeroConn("rebind")
	}
	if c.network == "" {
		return fmt.Errorf("%w: Rebind needs a Conn made by Listen", ErrInvalidConfig)
	}
	pc, err := net.ListenPacket(c.network, address)
	if err != nil {
		return err
	}
	s := newSocket(pc)
	setSocketBuffers(s)
	s.rs = c.newReadSet(s)
	c.rebindMu.Lock()
	defer c.rebindMu.Unlock()
	if c.isClosed() {
		pc.Close()
		return c.opError("rebind", nil, ErrClosed)
	}
	old := c.sock.Swap(s)
	c.wg.Add(1)
	go c.readLoop(s)
	return old.Close()
}
