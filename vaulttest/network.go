package vaulttest

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// DefaultQueueLen is the capacity, in datagrams, of the receive queue of
	// an endpoint whose Network has a QueueLen of zero.
	DefaultQueueLen = 1024

	// DefaultMaxDatagram is the size, in bytes, of the largest datagram an
	// endpoint writes when its Network has a MaxDatagram of zero: the largest
	// UDP payload over IPv4 (65535 bytes less 20 of IP header and 8 of UDP
	// header).
	DefaultMaxDatagram = 65507

	// FirstEphemeralPort is the first port Listen assigns when asked for
	// port 0. Ports are assigned in increasing order from it, wrapping
	// around at 65535, skipping ports in use.
	FirstEphemeralPort = 49152
)

// errMissingAddress is the error net.UDPConn returns for a nil destination.
var errMissingAddress = errors.New("missing address")

// A Network is an in-memory network of UDP endpoints. An endpoint, created by
// [Network.Listen], is a *[PacketConn] bound to one address; a datagram
// written to an address reaches the endpoint listening at exactly that
// address, if there is one, and is lost otherwise. There is no routing, no
// wildcard address and no loss other than the one a test causes: a full
// receive queue, an address nobody listens on, or a [FaultyConn].
//
// Delivery is synchronous and in order: when WriteTo returns, the datagram is
// in the receive queue of its destination (or was dropped or lost), so tests
// need no sleeps.
//
// The zero value is an empty network ready to use. A Network is safe for
// concurrent use by multiple goroutines; its exported fields must be set
// before the first call to Listen and not changed afterwards.
type Network struct {
	// QueueLen is the capacity, in datagrams, of the receive queue of each
	// endpoint. A datagram that arrives when the queue is full is discarded
	// and counted in the Dropped field of the receiver's [Stats], as a kernel
	// discards datagrams when a socket's receive buffer is full. If QueueLen
	// is zero or negative, DefaultQueueLen is used.
	QueueLen int

	// MaxDatagram is the size, in bytes, of the largest datagram an endpoint
	// writes; a larger one is refused with an error matching
	// syscall.EMSGSIZE. If MaxDatagram is zero or negative,
	// DefaultMaxDatagram is used.
	MaxDatagram int

	mu       sync.RWMutex
	conns    map[netip.AddrPort]*PacketConn
	nextPort int // next ephemeral port to try; 0 means FirstEphemeralPort
}

// NewNetwork returns a new, empty network. It is equivalent to new(Network).
func NewNetwork() *Network {
	return new(Network)
}

// Pipe returns two endpoints connected to each other on a new network of
// their own, with default settings: a listens at 127.0.0.1:1 and b at
// 127.0.0.1:2. Whatever a writes to b.LocalAddr() is read by b and vice
// versa.
func Pipe() (a, b *PacketConn) {
	n := NewNetwork()
	a, err := n.Listen(netip.MustParseAddrPort("127.0.0.1:1"))
	if err != nil {
		panic("vaulttest: Pipe: " + err.Error())
	}
	b, err = n.Listen(netip.MustParseAddrPort("127.0.0.1:2"))
	if err != nil {
		panic("vaulttest: Pipe: " + err.Error())
	}
	return a, b
}

// Listen creates an endpoint bound to addr on the network.
//
// The address must be a specific IPv4 or IPv6 address; an IPv4-mapped IPv6
// address is treated as the IPv4 address it maps. The unspecified addresses
// (0.0.0.0 and ::) are refused, since the network has no routing to decide
// which endpoint they stand for. If the port of addr is 0, Listen picks a
// free port on that IP address, in increasing order from
// FirstEphemeralPort, so a test that listens in the same order gets the same
// ports. If another endpoint is bound to addr, Listen returns an error
// matching syscall.EADDRINUSE. Closing an endpoint frees its address.
func (n *Network) Listen(addr netip.AddrPort) (*PacketConn, error) {
	ip := addr.Addr().Unmap()
	if !ip.IsValid() || ip.IsUnspecified() {
		var opAddr net.Addr
		if addr.Addr().IsValid() {
			opAddr = net.UDPAddrFromAddrPort(addr)
		}
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: opAddr,
			Err: &net.AddrError{Err: "vaulttest: not a specific IP address", Addr: addr.Addr().String()}}
	}
	addr = netip.AddrPortFrom(ip, addr.Port())

	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns == nil {
		n.conns = make(map[netip.AddrPort]*PacketConn)
	}
	if addr.Port() == 0 {
		port, ok := n.freePort(ip)
		if !ok {
			return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr),
				Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
		}
		addr = netip.AddrPortFrom(ip, port)
	} else if n.conns[addr] != nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: net.UDPAddrFromAddrPort(addr),
			Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
	}

	queueLen := n.QueueLen
	if queueLen <= 0 {
		queueLen = DefaultQueueLen
	}
	maxDatagram := n.MaxDatagram
	if maxDatagram <= 0 {
		maxDatagram = DefaultMaxDatagram
	}
	c := &PacketConn{
		network:       n,
		laddr:         addr,
		maxDatagram:   maxDatagram,
		queue:         make(chan datagram, queueLen),
		done:          make(chan struct{}),
		readDeadline:  makeDeadline(),
		writeDeadline: makeDeadline(),
	}
	n.conns[addr] = c
	return c, nil
}

// freePort returns the next ephemeral port free on ip. n.mu must be held.
func (n *Network) freePort(ip netip.Addr) (uint16, bool) {
	const count = 65536 - FirstEphemeralPort
	if n.nextPort < FirstEphemeralPort {
		n.nextPort = FirstEphemeralPort
	}
	for range count {
		port := uint16(n.nextPort)
		n.nextPort++
		if n.nextPort > 65535 {
			n.nextPort = FirstEphemeralPort
		}
		if n.conns[netip.AddrPortFrom(ip, port)] == nil {
			return port, true
		}
	}
	return 0, false
}

// lookup returns the endpoint bound to addr, or nil.
func (n *Network) lookup(addr netip.AddrPort) *PacketConn {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.conns[unmap(addr)]
}

// remove unbinds c from its address.
func (n *Network) remove(c *PacketConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns[c.laddr] == c {
		delete(n.conns, c.laddr)
	}
}

// A datagram is one datagram waiting in a receive queue.
type datagram struct {
	b    []byte
	from netip.AddrPort
}

// A PacketConn is an endpoint of a [Network]. It implements [net.PacketConn]
// and behaves as a *[net.UDPConn] bound to the same address does:
//
//   - ReadFrom returns the source address as a new *[net.UDPAddr] each time,
//     which the caller may keep. WriteTo accepts only a *net.UDPAddr; any
//     other address type is refused with an error matching syscall.EINVAL,
//     a nil one with a "missing address" error.
//   - WriteTo copies the datagram, so the caller may reuse its buffer at
//     once. A datagram larger than the network's MaxDatagram is refused with
//     an error matching syscall.EMSGSIZE. A datagram sent to an address
//     nobody listens on is lost, and WriteTo reports success.
//   - A datagram longer than the buffer given to ReadFrom is truncated to
//     the buffer's length without error; the rest is discarded.
//   - Each endpoint has a receive queue of bounded length; a datagram that
//     arrives when the queue is full is discarded silently.
//   - Deadlines work as for any [net.Conn]. A read or write past its
//     deadline fails with an error that matches [os.ErrDeadlineExceeded] and
//     is a [net.Error] whose Timeout method returns true. Setting a deadline
//     in the past, or changing it, takes effect at once, also for a ReadFrom
//     already blocked. Since WriteTo never blocks, a write deadline only
//     makes writes fail once it has passed.
//   - Close unblocks blocked reads and frees the address. After Close every
//     method but LocalAddr and Stats, Close included, returns a
//     *[net.OpError] wrapping [net.ErrClosed].
//
// Errors are *net.OpError values with Net "udp", as net.UDPConn returns.
// A PacketConn is safe for concurrent use by multiple goroutines.
type PacketConn struct {
	network     *Network
	laddr       netip.AddrPort
	maxDatagram int
	queue       chan datagram

	closeOnce sync.Once
	done      chan struct{} // closed by Close

	readDeadline  deadline
	writeDeadline deadline

	sent, received, truncated, dropped, lost atomic.Uint64
}

var _ net.PacketConn = (*PacketConn)(nil)

// Stats holds the counters of a [PacketConn].
type Stats struct {
	Sent      uint64 // datagrams accepted by WriteTo, including those lost or dropped later
	Received  uint64 // datagrams returned by ReadFrom
	Truncated uint64 // datagrams returned by ReadFrom cut to the length of the read buffer
	Dropped   uint64 // datagrams sent to this endpoint and discarded because its receive queue was full
	Lost      uint64 // datagrams written by this endpoint to an address nobody listened on
	Queued    int    // datagrams waiting in the receive queue now
}

// Stats returns a snapshot of the endpoint's counters. Each counter is read
// atomically, but not all of them at the same instant.
func (c *PacketConn) Stats() Stats {
	return Stats{
		Sent:      c.sent.Load(),
		Received:  c.received.Load(),
		Truncated: c.truncated.Load(),
		Dropped:   c.dropped.Load(),
		Lost:      c.lost.Load(),
		Queued:    len(c.queue),
	}
}

// LocalAddr returns the address the endpoint is bound to, as a new
// *[net.UDPAddr]. It still does after Close.
func (c *PacketConn) LocalAddr() net.Addr {
	if c == nil {
		return nil
	}
	return net.UDPAddrFromAddrPort(c.laddr)
}

// ReadFrom reads the next datagram into b, blocking until one arrives, the
// read deadline passes or the endpoint is closed. It returns the number of
// bytes copied into b, at most len(b), and the source address as a new
// *[net.UDPAddr].
func (c *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// ReadFromUDPAddrPort is as ReadFrom, but returns the source address as a
// [netip.AddrPort], without allocating.
func (c *PacketConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	if c == nil {
		return 0, netip.AddrPort{}, syscall.EINVAL
	}
	// As net.Pipe does: report an expired deadline or a closed endpoint even
	// when a datagram is waiting, as the kernel does for a socket.
	switch {
	case isClosedChan(c.done):
		return 0, netip.AddrPort{}, c.opError("read", nil, net.ErrClosed)
	case isClosedChan(c.readDeadline.wait()):
		return 0, netip.AddrPort{}, c.opError("read", nil, os.ErrDeadlineExceeded)
	}
	select {
	case d := <-c.queue:
		n := copy(b, d.b)
		if n < len(d.b) {
			c.truncated.Add(1)
		}
		c.received.Add(1)
		return n, d.from, nil
	case <-c.done:
		return 0, netip.AddrPort{}, c.opError("read", nil, net.ErrClosed)
	case <-c.readDeadline.wait():
		return 0, netip.AddrPort{}, c.opError("read", nil, os.ErrDeadlineExceeded)
	}
}

// WriteTo sends a copy of b as one datagram to addr, which must be a
// *[net.UDPAddr]. It never blocks. It returns len(b) and a nil error if the
// datagram was sent, whether or not anybody receives it.
func (c *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c == nil {
		return 0, syscall.EINVAL
	}
	a, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, c.opError("write", addr, syscall.EINVAL)
	}
	if a == nil {
		return 0, c.opError("write", nil, errMissingAddress)
	}
	if err := c.writeTo(b, a.AddrPort()); err != nil {
		return 0, c.opError("write", a, err)
	}
	return len(b), nil
}

// WriteToUDPAddrPort is as WriteTo, but takes the destination as a
// [netip.AddrPort], without allocating.
func (c *PacketConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if c == nil {
		return 0, syscall.EINVAL
	}
	if !addr.IsValid() {
		return 0, c.opError("write", nil, errMissingAddress)
	}
	if err := c.writeTo(b, addr); err != nil {
		return 0, c.opError("write", net.UDPAddrFromAddrPort(addr), err)
	}
	return len(b), nil
}

// writeTo sends b to addr and returns the bare error, if any.
func (c *PacketConn) writeTo(b []byte, addr netip.AddrPort) error {
	switch {
	case isClosedChan(c.done):
		return net.ErrClosed
	case isClosedChan(c.writeDeadline.wait()):
		return os.ErrDeadlineExceeded
	case len(b) > c.maxDatagram:
		return os.NewSyscallError("sendto", syscall.EMSGSIZE)
	}
	c.sent.Add(1)
	dst := c.network.lookup(addr)
	if dst == nil {
		c.lost.Add(1)
		return nil
	}
	select {
	case dst.queue <- datagram{b: append([]byte(nil), b...), from: c.laddr}:
	default:
		dst.dropped.Add(1)
	}
	return nil
}

// Close closes the endpoint: blocked and later reads and writes fail, and
// its address is free for Listen again. Datagrams waiting in its receive
// queue are discarded. A second Close returns an error wrapping
// [net.ErrClosed], as net.UDPConn does.
func (c *PacketConn) Close() error {
	if c == nil {
		return syscall.EINVAL
	}
	closed := false
	c.closeOnce.Do(func() {
		close(c.done)
		c.network.remove(c)
		c.readDeadline.set(time.Time{}) // stop the timers
		c.writeDeadline.set(time.Time{})
		closed = true
	})
	if !closed {
		return c.opError("close", nil, net.ErrClosed)
	}
	return nil
}

// SetDeadline sets the read and write deadlines, as [net.Conn] documents. A
// zero t means no deadline.
func (c *PacketConn) SetDeadline(t time.Time) error {
	if err := c.checkSet(); err != nil {
		return err
	}
	c.readDeadline.set(t)
	c.writeDeadline.set(t)
	return nil
}

// SetReadDeadline sets the deadline for ReadFrom and ReadFromUDPAddrPort,
// including calls already blocked. A zero t means no deadline.
func (c *PacketConn) SetReadDeadline(t time.Time) error {
	if err := c.checkSet(); err != nil {
		return err
	}
	c.readDeadline.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for WriteTo and WriteToUDPAddrPort. A
// zero t means no deadline.
func (c *PacketConn) SetWriteDeadline(t time.Time) error {
	if err := c.checkSet(); err != nil {
		return err
	}
	c.writeDeadline.set(t)
	return nil
}

// checkSet returns the error the Set*Deadline methods return after Close.
func (c *PacketConn) checkSet() error {
	if c == nil {
		return syscall.EINVAL
	}
	if isClosedChan(c.done) {
		return &net.OpError{Op: "set", Net: "udp", Addr: c.LocalAddr(), Err: net.ErrClosed}
	}
	return nil
}

// opError wraps err as net.UDPConn does for operation op.
func (c *PacketConn) opError(op string, addr net.Addr, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: c.LocalAddr(), Addr: addr, Err: err}
}

// A deadline signals that a point in time has passed by closing a channel.
// It is the pipeDeadline of net.Pipe: setting it stops the pending timer
// and either re-arms it, closes the channel at once (a time in the past) or
// leaves it open (the zero time). Waiters that select on the channel
// returned by wait see the change immediately.
type deadline struct {
	mu     sync.Mutex // guards timer and cancel
	timer  *time.Timer
	cancel chan struct{} // never nil; closed when the deadline has passed
}

func makeDeadline() deadline {
	return deadline{cancel: make(chan struct{})}
}

// set sets the deadline to t; the zero t means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()

	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // wait for the timer callback to close cancel
	}
	d.timer = nil

	closed := isClosedChan(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel that is closed when the deadline has passed.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosedChan(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
