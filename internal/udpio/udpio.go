// Package udpio is the datagram socket beneath a vaultudp Conn: reads and
// writes over a net.PacketConn, with the system's faster paths where the
// PacketConn is a *net.UDPConn and the system has them (batch reads with
// recvmmsg, segmented writes with UDP GSO, coalesced reads with UDP GRO,
// the local address of each datagram with IP_PKTINFO: Linux only,
// udp_linux.go), and otherwise the portable path every system with a
// *net.UDPConn has (udp_portable.go, which Linux builds with the
// vaultudp_portable tag use too): one datagram per ReadFromUDPAddrPort and
// WriteToUDPAddrPort, or per ReadFrom and WriteTo of another PacketConn.
// Errors that mean something particular on a system are told apart here
// (Transient; errno_*.go). What a Socket can do is decided once, when New
// makes it, and reported by Caps; the methods are the same either way.
package udpio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ErrSegmentSize is returned by WriteSegments for a segment size that is
// not positive.
var ErrSegmentSize = errors.New("udpio: segment size must be positive")

// Caps says what a Socket does beneath its methods.
type Caps struct {
	// BatchRead: a Reader may return many datagrams from one system call
	// (recvmmsg).
	BatchRead bool
	// GSO: WriteSegments sends a train of equal datagrams in one system
	// call (UDP_SEGMENT). It may turn off later, for good, when the
	// device refuses it.
	GSO bool
	// GRO: a Reader reads into 64 KiB buffers of its own, so that any
	// datagram arrives whole, and once the socket has a backlog the
	// kernel may coalesce received datagrams of one flow, which a Reader
	// splits again (UDP_GRO); callers see single datagrams.
	GRO bool
	// PacketInfo: each datagram read carries the local address it was
	// sent to (Message.Local), and writes leave from the source address
	// they are given. Only sockets bound to a wildcard address (0.0.0.0,
	// ::) have it: a socket bound to one address always sends from it.
	PacketInfo bool
	// Deadlines: SetReadDeadline interrupts a Read in progress at once,
	// also one in another goroutine, as on a *net.UDPConn, so that
	// readers may hand the socket to each other.
	Deadlines bool
	// IPv4Only: the socket is an IPv4 one (a *net.UDPConn bound to an
	// IPv4 address), and a write to an IPv6 address fails.
	IPv4Only bool
}

// Message is one datagram read.
type Message struct {
	// Buf is the buffer to read into; the caller sets it.
	Buf []byte
	// N is the number of bytes read into Buf.
	N int
	// Addr is the source, IPv4-mapped IPv6 addresses unmapped. It is the
	// zero AddrPort when the PacketConn reports a non-UDP address.
	Addr netip.AddrPort
	// Local is the local address the datagram was sent to, unmapped, on
	// a socket with Caps.PacketInfo; the zero Addr otherwise.
	Local netip.Addr
	// Truncated is set when the datagram did not fit Buf (or filled it
	// exactly: the caller's buffer should have a spare byte).
	Truncated bool
	// Whole is, for a datagram that did not fit Buf but was received
	// whole (a socket with Caps.GRO reads into 64 KiB buffers of its
	// own), the whole datagram, valid until the next Read; nil otherwise.
	Whole []byte
}

// Socket is a datagram socket. Its methods are safe for concurrent use;
// each Reader is for one goroutine at a time.
type Socket interface {
	// Caps returns what the socket does now.
	Caps() Caps
	// NewReader returns a reader with its own buffers of system state.
	NewReader() Reader
	// WriteTo sends b to to, from src on a socket with Caps.PacketInfo
	// when src is valid and of to's family; src is ignored otherwise,
	// and also when the system refuses it (the address is gone, say):
	// the datagram then leaves from the address the system chooses.
	WriteTo(b []byte, to netip.AddrPort, src netip.Addr) error
	// WriteSegments sends the datagrams laid out back to back in b, each
	// size bytes but the last (which may be shorter), to one address, as
	// WriteTo does each. It returns how many of them were sent: on an
	// error, those before the count were sent and none after it.
	WriteSegments(b []byte, size int, to netip.AddrPort, src netip.Addr) (int, error)
	// SetReadDeadline sets the deadline of Reads, as on net.PacketConn.
	SetReadDeadline(t time.Time) error
	// SetReadBuffer and SetWriteBuffer set the socket's kernel buffers
	// where the PacketConn has such methods; they do nothing otherwise.
	SetReadBuffer(bytes int) error
	SetWriteBuffer(bytes int) error
	// LocalAddr returns the PacketConn's local address.
	LocalAddr() net.Addr
	// Close closes the PacketConn.
	Close() error
}

// Reader reads datagrams.
type Reader interface {
	// Read waits for a datagram, fills ms[0:n] with it and those already
	// received (n >= 1, at most len(ms)), and returns n. Each
	// ms[i].Buf must be set by the caller; the other fields are set by
	// Read. On an error n is 0. Datagrams a GRO read brought in that did
	// not fit ms are returned by the next calls, without waiting.
	Read(ms []Message) (int, error)
	// Buffered returns how many datagrams the next Read returns without
	// reading the socket. A goroutine that stops reading should first
	// read them, or they wait in the Reader.
	Buffered() int
	// Release gives up the Reader's buffers, for other Readers to reuse,
	// once no goroutine reads with it any more. It must not be read with
	// afterwards (a Reader with buffers of its own then fails with
	// net.ErrClosed rather than touch them).
	Release()
}

// New returns a Socket over pc: a *net.UDPConn gets the system's batch
// I/O, GSO, GRO and packet info where the system has them, any other
// PacketConn plain ReadFrom and WriteTo (with Caps all false).
func New(pc net.PacketConn) Socket {
	if uc, ok := pc.(*net.UDPConn); ok {
		if s := newUDP(uc); s != nil {
			return s
		}
	}
	return &basicSocket{pc: pc}
}

// AddrPortOf returns the AddrPort of a *net.UDPAddr, unmapped, and the
// zero AddrPort for any other address.
func AddrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// basicSocket is the portable fallback: one datagram per call through the
// net.PacketConn methods.
type basicSocket struct {
	pc net.PacketConn
}

func (s *basicSocket) Caps() Caps          { return Caps{} }
func (s *basicSocket) NewReader() Reader   { return basicReader{s.pc, sysErrnos()} }
func (s *basicSocket) LocalAddr() net.Addr { return s.pc.LocalAddr() }
func (s *basicSocket) Close() error        { return s.pc.Close() }

func (s *basicSocket) SetReadDeadline(t time.Time) error { return s.pc.SetReadDeadline(t) }

func (s *basicSocket) SetReadBuffer(bytes int) error {
	if b, ok := s.pc.(interface{ SetReadBuffer(int) error }); ok {
		return b.SetReadBuffer(bytes)
	}
	return nil
}

func (s *basicSocket) SetWriteBuffer(bytes int) error {
	if b, ok := s.pc.(interface{ SetWriteBuffer(int) error }); ok {
		return b.SetWriteBuffer(bytes)
	}
	return nil
}

func (s *basicSocket) WriteTo(b []byte, to netip.AddrPort, _ netip.Addr) error {
	_, err := s.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
	return sysErrnos().writeError(err)
}

func (s *basicSocket) WriteSegments(b []byte, size int, to netip.AddrPort, src netip.Addr) (int, error) {
	return writeEach(s, b, 0, size, to, src)
}

// writeEach sends the datagrams of b from byte off on (a multiple of
// size) one by one, and returns how many datagrams of b have been sent.
func writeEach(w Socket, b []byte, off, size int, to netip.AddrPort, src netip.Addr) (int, error) {
	if size <= 0 {
		return 0, fmt.Errorf("%w: %d", ErrSegmentSize, size)
	}
	n := off / size
	for off < len(b) {
		end := min(off+size, len(b))
		if err := w.WriteTo(b[off:end], to, src); err != nil {
			return n, err
		}
		off = end
		n++
	}
	return n, nil
}

type basicReader struct {
	pc    net.PacketConn
	rules *errnoRules
}

func (r basicReader) Buffered() int { return 0 }
func (r basicReader) Release()      {}

func (r basicReader) Read(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	m := &ms[0]
	n, addr, err := r.pc.ReadFrom(m.Buf)
	if err != nil {
		if !r.rules.isMsgSize(err) {
			return 0, err
		}
		// Cut to the buffer (WSAEMSGSIZE), as portableReader.Read says.
		m.N, m.Truncated, m.Addr, m.Local = min(n, len(m.Buf)), true, netip.AddrPort{}, netip.Addr{}
		return 1, nil
	}
	m.N, m.Truncated = n, n == len(m.Buf)
	m.Addr, m.Local = AddrPortOf(addr), netip.Addr{}
	return 1, nil
}
