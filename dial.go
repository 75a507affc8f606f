package vaultudp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"
)

// Dial is DialContext with a background context.
func Dial(network, address string, config *Config) (net.Conn, error) {
	return DialContext(context.Background(), network, address, config)
}

// DialContext opens a Conn on a socket of its own, connected to the one
// peer at address, as net.DialUDP is, and returns it once the handshake
// with that peer is done (at once if the peer's policy is Plaintext), or
// an error if it failed: ctx ended, Config.HandshakeTimeout passed, or the
// trust rules refused the peer. network is "udp", "udp4"
// or "udp6"; address is "host:port", where host may be a name, resolved
// as net.Dial does (for "udp", an IPv4 address is preferred). A nil
// config means every default.
//
// The returned net.Conn reads only datagrams from that peer (those from
// other addresses are dropped, never returned) and writes only to it. Its
// deadlines behave as a *net.UDPConn's, and Close closes its socket.
// LocalAddr is the local address the route to the peer uses. Like a
// connected *net.UDPConn it is a net.PacketConn too, which consumers such
// as miekg/dns look for to tell datagrams from streams: ReadFrom is Read
// returning the peer's address, and WriteTo fails with
// net.ErrWriteToConnected.
//
// Trust: the peer is a configured peer. To pin its key, put a PeerConfig
// for the resolved address, with its PublicKey, in config.Peers (an entry
// for that address is used as it is, Policy and Protocol included);
// otherwise config.VerifyPeer decides, and with neither any correctly
// signed key is accepted, which stops eavesdroppers but not a man in the
// middle. The socket still answers handshakes from other addresses as a
// Conn does (VerifyPeer, when set, decides on them too), but what they
// send is never returned.
//
// Errors are *net.OpError with Op "dial", wrapping the cause: an address
// that does not resolve, ctx's error, or the handshake's error:
// ErrPeerRejected when the trust rules refused the peer's key,
// ErrHandshakeTimeout when no session came in time.
func DialContext(ctx context.Context, network, address string, config *Config) (net.Conn, error) {
	opErr := func(raddr net.Addr, laddr net.Addr, err error) error {
		return &net.OpError{Op: "dial", Net: network, Source: laddr, Addr: raddr, Err: err}
	}
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, opErr(nil, nil, net.UnknownNetworkError(network))
	}
	raddr, err := resolveUDP(ctx, network, address)
	if err != nil {
		return nil, opErr(nil, nil, err)
	}
	ua := net.UDPAddrFromAddrPort(raddr)
	// The local address the route to the peer takes, as net.DialUDP binds.
	probe, err := net.DialUDP(network, nil, ua)
	if err != nil {
		return nil, opErr(ua, nil, err)
	}
	local := probe.LocalAddr().(*net.UDPAddr).AddrPort().Addr()
	probe.Close()
	family := "udp4"
	if !local.Unmap().Is4() {
		family = "udp6"
	}

	var cfg Config
	if config != nil {
		cfg = *config
	}
	cfg.Peers = slices.Clone(cfg.Peers)
	if !slices.ContainsFunc(cfg.Peers, func(p PeerConfig) bool { return normAddr(p.Addr) == raddr }) {
		cfg.Peers = append(cfg.Peers, PeerConfig{Addr: raddr})
	}
	c, err := Listen(family, net.JoinHostPort(local.Unmap().String(), "0"), &cfg)
	if err != nil {
		return nil, opErr(ua, nil, err)
	}
	p := c.peers.lookup(raddr)
	if p == nil { // Listen added it from cfg.Peers
		c.Close()
		return nil, opErr(ua, nil, fmt.Errorf("%w: %v was not added", ErrUnknownPeer, raddr))
	}
	if p.policy() == Plaintext {
		return &dialConn{c: c, p: p}, nil // no handshake to wait for
	}
	if err := c.Handshake(ctx, raddr); err != nil {
		laddr := c.LocalAddr()
		c.Close()
		return nil, opErr(ua, laddr, err)
	}
	return &dialConn{c: c, p: p}, nil
}

// resolveUDP resolves "host:port" for network, preferring IPv4 for "udp".
func resolveUDP(ctx context.Context, network, address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	pn, err := net.DefaultResolver.LookupPort(ctx, network, port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if pn == 0 {
		return netip.AddrPort{}, &net.AddrError{Err: "port 0 cannot be dialed", Addr: address}
	}
	want := map[string]string{"udp": "ip", "udp4": "ip4", "udp6": "ip6"}[network]
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if host == "" {
		ips = []netip.Addr{netip.IPv6Loopback(), netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, want, host); err != nil {
		return netip.AddrPort{}, err
	}
	var v6 netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4() && network != "udp6":
			return netip.AddrPortFrom(ip, uint16(pn)), nil
		case ip.Is6() && network != "udp4" && !v6.IsValid():
			v6 = ip
		}
	}
	if v6.IsValid() {
		return netip.AddrPortFrom(v6, uint16(pn)), nil
	}
	return netip.AddrPort{}, &net.AddrError{Err: "no suitable address for " + network, Addr: host}
}

// dialConn is the net.Conn of Dial: a Conn of its own, one peer.
type dialConn struct {
	c *Conn
	p *peer // the dialed peer; a configured peer of c, never removed
}

// addr is the peer's address now (it moves when the peer roams).
func (d *dialConn) addr() netip.AddrPort {
	return *d.p.at.Load()
}

func (d *dialConn) Read(b []byte) (int, error) {
	for {
		n, from, err := d.c.ReadFromUDPAddrPort(b)
		if err != nil || from == d.addr() {
			return n, err
		}
		// From another address: dropped, as a connected socket does.
	}
}

func (d *dialConn) Write(b []byte) (int, error) {
	return d.c.WriteToUDPAddrPort(b, d.addr())
}

// ReadFrom is Read, returning the peer's address.
func (d *dialConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := d.Read(b)
	if err != nil {
		return n, nil, err
	}
	return n, d.RemoteAddr(), nil
}

// WriteTo fails with net.ErrWriteToConnected, as on a connected
// *net.UDPConn.
func (d *dialConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	return 0, &net.OpError{Op: "write", Net: "udp", Source: d.LocalAddr(), Addr: addr, Err: net.ErrWriteToConnected}
}

func (d *dialConn) Close() error                       { return d.c.Close() }
func (d *dialConn) LocalAddr() net.Addr                { return d.c.LocalAddr() }
func (d *dialConn) RemoteAddr() net.Addr               { return net.UDPAddrFromAddrPort(d.addr()) }
func (d *dialConn) SetDeadline(t time.Time) error      { return d.c.SetDeadline(t) }
func (d *dialConn) SetReadDeadline(t time.Time) error  { return d.c.SetReadDeadline(t) }
func (d *dialConn) SetWriteDeadline(t time.Time) error { return d.c.SetWriteDeadline(t) }

// SetReadBuffer and SetWriteBuffer size the socket's buffers, as on
// *net.UDPConn.
func (d *dialConn) SetReadBuffer(bytes int) error  { return d.c.SetReadBuffer(bytes) }
func (d *dialConn) SetWriteBuffer(bytes int) error { return d.c.SetWriteBuffer(bytes) }

// peerQueue is where the receive path delivers a peer's datagrams while a
// net.Conn from ConnTo reads them, instead of the Conn's own queue.
type peerQueue struct {
	ch chan *packet
}

// connToQueue returns the queue of the net.Conn from ConnTo that reads p,
// or nil (p nil: none).
func (p *peer) connToQueue() *peerQueue {
	if p == nil {
		return nil
	}
	return p.connTo.Load()
}

// toPeerQueue queues pkt for the net.Conn reading pq, if the packets
// waiting in all such queues of the Conn stay within Config.ReadQueue, as
// they would in the Conn's own queue: a Listener with many peers, or many
// ConnTo net.Conns, hold no more than one read queue's worth between them.
//
// pq is p's: if p's net.Conn is closed meanwhile, its Close (which takes
// pq off p, then empties it) may have emptied pq before pkt came, and
// nobody would take pkt or give its count back: it is dropped here then.
func (c *Conn) toPeerQueue(p *peer, pq *peerQueue, pkt *packet) bool {
	if c.peerQueued.Add(1) > int64(c.cfg.ReadQueue) {
		c.peerQueued.Add(-1)
		return false
	}
	select {
	case pq.ch <- pkt:
	default:
		c.peerQueued.Add(-1)
		return false
	}
	if p.connTo.Load() != pq {
		c.dropPeerQueue(pq)
	}
	return true
}

// dropPeerQueue drops what waits in pq, whose net.Conn is closed.
func (c *Conn) dropPeerQueue(pq *peerQueue) {
	for {
		select {
		case pkt := <-pq.ch:
			c.fromPeerQueue()
			c.putPacket(pkt)
		default:
			return
		}
	}
}

// fromPeerQueue counts a packet taken out of a ConnTo queue.
func (c *Conn) fromPeerQueue() { c.peerQueued.Add(-1) }

// ConnTo returns a net.Conn for the peer at addr, which must be a peer of
// c already (configured, or learned from the network), over c's socket.
// While it is open, the datagrams of that peer go to its Read and no
// longer to c's ReadFrom (and ReadBatch); other peers are not affected.
// Its Write sends to the peer as WriteTo does, following the peer when it
// roams. As Dial's, it is a net.PacketConn too (ReadFrom returns the
// peer's address, WriteTo fails with net.ErrWriteToConnected). Its
// deadlines are its own (c's write deadline applies too), and its Close
// stops the diversion (datagrams not yet read are dropped) without
// closing c.
//
// A peer has at most one such net.Conn at a time. ConnTo fails with an
// error wrapping ErrUnknownPeer if addr is not a peer, ErrInvalidConfig
// if it already has one or speaks ProtocolV2, ErrClosed if c is closed.
// When the peer is dropped (RemovePeer, replaced by AddPeer, or a learned
// peer forgotten when idle: AddPeer it to keep it), Read and Write return
// an error wrapping the reason; when c is closed, errors wrapping
// ErrClosed.
func (c *Conn) ConnTo(addr netip.AddrPort) (net.Conn, error) {
	if !c.ok() {
		return nil, errZeroConn("dial")
	}
	addr = normAddr(addr)
	if c.isClosed() {
		return nil, c.opError("connto", nil, ErrClosed)
	}
	p := c.peers.lookup(addr)
	if p == nil {
		return nil, fmt.Errorf("%w: %v", ErrUnknownPeer, addr)
	}
	if p.proto != nil {
		return nil, fmt.Errorf("%w: %v: ConnTo does not serve ProtocolV2 peers", ErrInvalidConfig, addr)
	}
	q := &peerQueue{ch: make(chan *packet, c.cfg.ReadQueue)}
	if !p.connTo.CompareAndSwap(nil, q) {
		return nil, fmt.Errorf("%w: %v already has a net.Conn from ConnTo", ErrInvalidConfig, addr)
	}
	pc := &peerConn{
		c: c, p: p, q: q,
		readDeadline:  newDeadline(),
		writeDeadline: newDeadline(),
		closed:        make(chan struct{}),
	}
	pc.r = appReader{q: q.ch, deadline: pc.readDeadline, closed: pc.closed, gone: pc.gone}
	return pc, nil
}

// peerConn is the net.Conn of ConnTo.
type peerConn struct {
	c *Conn
	p *peer
	q *peerQueue

	readDeadline  *deadline
	writeDeadline *deadline
	closed        chan struct{}
	closeOnce     sync.Once

	// r is its Read as a reader of c's socket: while no other goroutine
	// reads it, Read reads the socket itself (reader.go), and its peer's
	// datagrams reach it with no hand-off between goroutines, as the
	// Conn's own ReadFrom does.
	r appReader
}

func (pc *peerConn) opError(op string, err error) error {
	e := &net.OpError{Op: op, Net: "udp", Source: pc.c.LocalAddr(), Err: err}
	if op == "write" {
		e.Addr = pc.RemoteAddr()
	}
	return e
}

// state returns the peer's address, the channel that says when its state
// may change, and the reason it was dropped (nil while it is a peer).
func (pc *peerConn) state() (netip.AddrPort, chan struct{}, error) {
	pc.p.mu.Lock()
	defer pc.p.mu.Unlock()
	var err error
	if pc.p.removed {
		err = pc.p.hs.failErr
		if err == nil {
			err = fmt.Errorf("%w: %v was dropped", ErrUnknownPeer, pc.p.addr)
		}
	}
	return pc.p.addr, pc.p.changedLocked(), err
}

// gone reports why the peer can no longer be read (it was dropped), or
// nil.
func (pc *peerConn) gone() error {
	_, _, dropped := pc.state()
	return dropped
}

func (pc *peerConn) Read(b []byte) (int, error) {
	c := pc.c
	for {
		select {
		case pkt := <-pc.q.ch:
			return pc.take(b, pkt), nil
		default:
		}
		if isClosed(pc.closed) {
			return 0, pc.opError("read", net.ErrClosed)
		}
		_, changed, dropped := pc.state()
		if dropped != nil {
			return 0, pc.opError("read", dropped)
		}
		direct := c.directToken()
		select {
		case direct <- struct{}{}:
			pkt, err := c.readDirect(&pc.r)
			<-direct
			if err != nil {
				if oe, ok := err.(*net.OpError); ok {
					return 0, oe // the socket fails (readerr.go)
				}
				return 0, pc.opError("read", err)
			}
			return pc.take(b, pkt), nil
		case pkt := <-pc.q.ch:
			return pc.take(b, pkt), nil
		case err := <-c.readErr:
			return 0, err // the socket fails (readerr.go)
		case <-pc.closed:
			return 0, pc.opError("read", net.ErrClosed)
		case <-c.closed:
			return 0, pc.opError("read", net.ErrClosed)
		case <-pc.readDeadline.wait():
			return 0, pc.opError("read", os.ErrDeadlineExceeded)
		case <-changed: // a session came, or the peer was dropped: look again
		}
	}
}

// ReadFrom is Read, returning the peer's address.
func (pc *peerConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := pc.Read(b)
	if err != nil {
		return n, nil, err
	}
	return n, pc.RemoteAddr(), nil
}

// WriteTo fails with net.ErrWriteToConnected, as on a connected
// *net.UDPConn.
func (pc *peerConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	e := pc.opError("write", net.ErrWriteToConnected).(*net.OpError)
	e.Addr = addr
	return 0, e
}

func (pc *peerConn) take(b []byte, pkt *packet) int {
	pc.c.fromPeerQueue()
	n := copy(b, pkt.data)
	pc.c.putPacket(pkt)
	return n
}

func (pc *peerConn) Write(b []byte) (int, error) {
	if isClosed(pc.closed) {
		return 0, pc.opError("write", net.ErrClosed)
	}
	if isClosed(pc.writeDeadline.wait()) {
		return 0, pc.opError("write", os.ErrDeadlineExceeded)
	}
	to, _, dropped := pc.state()
	if dropped != nil {
		return 0, pc.opError("write", dropped)
	}
	return pc.c.writeTo(b, to, pc.writeDeadline) // its own deadline, also while the send queue is full
}

// Close stops the diversion of the peer's datagrams; it does not close
// the Conn. A second Close returns an error wrapping net.ErrClosed.
func (pc *peerConn) Close() error {
	first := false
	pc.closeOnce.Do(func() {
		first = true
		close(pc.closed)
		pc.c.kickDirectReader() // a Read in the socket returns (reader.go)
		pc.p.connTo.CompareAndSwap(pc.q, nil)
		pc.readDeadline.stop()
		pc.writeDeadline.stop()
		pc.c.dropPeerQueue(pc.q)
	})
	if !first {
		return pc.opError("close", net.ErrClosed)
	}
	return nil
}

func (pc *peerConn) LocalAddr() net.Addr { return pc.c.LocalAddr() }

func (pc *peerConn) RemoteAddr() net.Addr {
	to, _, _ := pc.state()
	return net.UDPAddrFromAddrPort(to)
}

func (pc *peerConn) SetDeadline(t time.Time) error {
	if err := pc.SetReadDeadline(t); err != nil {
		return err
	}
	return pc.SetWriteDeadline(t)
}

func (pc *peerConn) SetReadDeadline(t time.Time) error {
	if isClosed(pc.closed) {
		return pc.opError("set", net.ErrClosed)
	}
	pc.c.setReadDeadline(pc.readDeadline, t) // also a Read's in the socket (reader.go)
	return nil
}

func (pc *peerConn) SetWriteDeadline(t time.Time) error {
	if isClosed(pc.closed) {
		return pc.opError("set", net.ErrClosed)
	}
	pc.writeDeadline.set(t)
	return nil
}

// PeerConn is the net.Conn of Dial, ConnTo and Listener.Accept: one
// peer's datagrams, and what the Conn knows of that peer. Those functions
// return a net.Conn, as net.Dial does; assert it to a PeerConn to reach
// Peer (as pion/dtls's ConnectionState is reached).
type PeerConn interface {
	net.Conn
	// Peer describes the peer now: its key (pinned, or of its session),
	// whether it has a session, the last handshake, the datagrams and
	// bytes exchanged, and the last failure.
	Peer() PeerInfo
}

var (
	_ PeerConn = (*dialConn)(nil)
	_ PeerConn = (*peerConn)(nil)
)

// Peer describes the dialed peer.
func (d *dialConn) Peer() PeerInfo { return d.c.infoOf(d.p, d.c.now()) }

// Peer describes the peer this net.Conn reads and writes.
func (pc *peerConn) Peer() PeerInfo { return pc.c.infoOf(pc.p, pc.c.now()) }
