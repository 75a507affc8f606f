package vaultudp

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
	"golang.org/x/time/rate"
)

// Conn is an encrypting net.PacketConn. Key exchange, sealing, padding,
// compression, replay checks and rate limits happen beneath its methods,
// so code written for a *net.UDPConn uses it unchanged:
//
//   - ReadFrom returns only datagrams that passed every check, with a
//     fresh *net.UDPAddr as the source. Bad, forged, replayed or refused
//     datagrams are dropped and counted in Stats, never returned as
//     errors, because consumers such as quic-go stop on read errors.
//   - WriteTo seals and sends at once when the peer has a session, and
//     otherwise starts the handshake and queues the datagram until it
//     completes (see Config.HandshakeTimeout). It fails only where a
//     *net.UDPConn would, or when the trust rules refused the peer's key
//     (ErrPeerRejected); a datagram that cannot go for a passing reason
//     is dropped and counted in Stats.Drops. A write to the Conn's own
//     address (or, on a wildcard bind, a loopback address with its port)
//     is delivered to its own readers, as on a UDP socket. A writer that
//     streams faster than the socket's system calls has its datagrams
//     gathered, in order, into trains that the Conn sends in one call each
//     (UDP GSO); it waits only while 256 KiB are queued, as on a full
//     socket send buffer, and Close sends what is queued before it closes
//     the socket.
//   - Deadlines behave as on *net.UDPConn: timeouts are
//     os.ErrDeadlineExceeded, and a deadline changed while a call waits
//     takes effect at once.
//   - Close unblocks every call; later calls return errors wrapping
//     net.ErrClosed; every goroutine the Conn started has ended when
//     Close returns.
//
// Conn deliberately has no ReadMsgUDP or WriteMsgUDP: consumers that find
// them (quic-go, kcp-go) would read the socket beneath and bypass the
// decryption. All methods are safe for concurrent use.
type Conn struct {
	// Set by newConn and never changed.
	cfg        Config
	network    string // Listen's network; empty for Wrap
	hs         *handshaker
	z          *compressor
	cookies    *cookieJar // its own lock (cookie.go)
	resets     *resetter  // its own lock (reset.go)
	log        *slog.Logger
	mtu        int
	datagram   int // the largest datagram on the wire (UDP payload)
	maxPayload int
	bufSize    int
	start      time.Time // for the send queue's estimate of a system call's cost (sendqueue.go)
	clk        clock     // every timed rule's time (clock.go)
	v2         *v2.Endpoint
	spare      *spareEntropy // the first handshake's keys, made ahead (handshake.go)
	psk        *[32]byte     // Config.PresharedKey, copied; nil: none

	// Atomic: read and written by any goroutine without a lock.
	clock       atomic.Int64 // coarse monotonic nanoseconds of clk, advanced each tick (timers.go)
	stats       counters
	queuedBytes atomic.Int64           // bytes waiting for handshakes, all peers
	peerQueued  atomic.Int64           // packets waiting in the queues of ConnTo net.Conns, all peers (dial.go)
	heldBytes   atomic.Int64           // buffers held on paths being validated, all peers (path.go)
	sock        atomic.Pointer[socket] // replaced by Rebind under rebindMu

	routes *routeCache // route MTUs per destination, with its own lock (pathmtu.go)

	// Channels and pools: safe for concurrent use by themselves.
	//
	// freePkts recycles packets between the reader goroutine and
	// ReadFrom. A channel rather than a sync.Pool: the two run on
	// different Ps, and a Pool then allocates in steady state.
	freePkts chan *packet
	bufs     sync.Pool // *[]byte, for sealing
	runBufs  sync.Pool // *[]byte, for WriteBatch's trains of sealed datagrams
	recvQ    chan *packet
	hw       *hsWork       // the handshake queue and workers, with its own lock (handshake_workers.go)
	hsElems  sync.Pool     // *handshakeElem
	hsQueued atomic.Int32  // messages queued or handled, not yet committed (handshake_queue.go)
	hsInline *rate.Limiter // handshake messages the readers may handle themselves

	// The read side (reader.go): deadlines, and who reads the socket.
	readDeadline  *deadline
	rd            readCoord     // its own lock, rd.mu
	bgWake        chan struct{} // wakes the background reader
	readErr       chan error    // a read error of the background reader's, for ReadFrom (readerr.go)
	appToken      chan struct{} // held by the one application goroutine reading the socket
	own           appReader     // the Conn's read methods as a reader of the socket (reader.go)
	writeDeadline *deadline
	noDeadline    *deadline // never set: what the Conn sends for the application waits under it (keypairs.go flush)

	closed  chan struct{}
	closing atomic.Bool // Close has begun: a second returns at once, as *net.UDPConn's does
	wg      sync.WaitGroup

	// Config.Events and the Logger's handler (events.go): the queue, its
	// goroutine's end, and that goroutine's id (Close called from a
	// callback must not wait for itself).
	events   chan notice
	evDone   chan struct{}
	evCaller atomic.Uint64

	// Owned by the housekeeping goroutine (timers.go).

	// The locks, in the one order they are taken (a lock is never taken
	// while one below it is held):
	//
	//	rs.mu      a socket's read set (socket.go): the turn of the one
	//	           goroutine reading the socket, held across its read and
	//	           the handling of what came, handshakes answered inline
	//	           included; only the reading goroutines and the release
	//	           of a closed socket's set take it
	//	hs turn    the handshake messages' commits (hsWork.finish,
	//	           handshake_workers.go): one at a time, in queue order, run
	//	           by whichever goroutine finds the turn free; never waited
	//	           for (one that finds it taken leaves its commit to the
	//	           holder). Held across the answer's send, the route's MTU
	//	           lookup, a reply's crypto (handleReply) and the wait for
	//	           Config.VerifyPeer (which runs on a goroutine of its own);
	//	           a hello's and a final message's crypto run before, on a
	//	           worker, with none of these locks held
	//	rd.mu      who reads the socket (reader.go); brief
	//	rebindMu   Rebind against Close: held across the send queue's
	//	           drain and the socket's close
	//	peers.mu   the peer table (peertable.go); every write takes it for reading
	//	           (peerFor), briefly
	//	v2 mu      the ProtocolV2 peers by address (internal/v2 Endpoint)
	//	v2 sendMu  a ProtocolV2 peer's send order (internal/v2 Peer)
	//	peer.mu    one peer's address, handshake attempt and queue (peer.go)
	//	v2 peer mu a ProtocolV2 peer's keys and replay cache
	//	peer.kp.mu its session slots (keypairs.go)
	//	index.mu   sessions and initiations by index (keypairs.go)
	//	sq.mu      the send queue (sendqueue.go); like index.mu, it is
	//	           taken last and never held while waiting
	//
	// The leaves, each taken alone: cookies.mu, resets.mu, routes.mu, the
	// deadlines', hw.mu and the response's (handshake.go: held across
	// ReadFinal). opens.mu (the open workers' start and stop,
	// receive_workers.go) is a leaf too, taken by a reader with rs.mu held.
	//
	// A name ending in Locked is called with a lock held: TableLocked,
	// c.peers.mu; otherwise the mu of the peer it works on (its argument, or
	// its receiver), or of the value it is a method of (a cookieJar,
	// the sessionIndex), or the lock its comment names (c.rd.mu in
	// reader.go). No lock but rs.mu, the hs turn and a response's is held
	// across crypto or a system call, and none across a call of the
	// application's code: the
	// Logger is called with no lock held, VerifyPeer on a goroutine of
	// its own, so both may call any method of the Conn, Close included.
	// The data path takes none of them in the steady state but rs.mu,
	// once per read: it finds sessions by index without a lock, a writer
	// reads its peer's current session atomically (keypairs.go), and a
	// direct write takes no lock of the send queue's (sendqueue.go).
	rebindMu sync.Mutex

	// The peers by address, under a lock of their own (peertable.go).
	peers peerTable

	// With locks of their own (see the list above).
	index *sessionIndex // sessions and initiations by local index (keypairs.go)
	sq    *sendQueue    // sealed datagrams behind a streaming writer (sendqueue.go)

	opens openers // the open workers (receive_workers.go)
}

// newConn returns a Conn over s; the caller closes s if it fails.
func newConn(s *socket, config *Config) (*Conn, error) {
	cfg, err := config.resolve()
	if err != nil {
		return nil, err
	}
	for i := range cfg.Peers {
		if err := cfg.Peers[i].check(); err != nil {
			return nil, err
		}
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu, _ = discoverMTU(cfg.interfaces)
	}
	datagram := datagramSize(mtu, s.ipv6)
	maxPayload := maxPayloadFor(datagram)
	if maxPayload < 1 {
		return nil, fmt.Errorf("%w: MTU %d leaves no room for a payload", ErrInvalidConfig, mtu)
	}
	// Payloads from peers may be as large as this Conn receives
	// (sizes.go): the decoder's bound.
	z, err := newCompressor(maxPayloadFor(recvBufSize(mtu) - 1))
	if err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:           cfg,
		hs:            newHandshaker(cfg.Identity),
		z:             z,
		cookies:       newCookieJar(cfg.CookieThreshold, cfg.clock.wall()),
		resets:        newResetter(cfg.Identity),
		log:           cfg.Logger,
		mtu:           mtu,
		datagram:      datagram,
		maxPayload:    maxPayload,
		bufSize:       recvBufSize(mtu),
		peers:         newPeerTable(cfg.MaxPeers),
		start:         time.Now(),
		clk:           cfg.clock,
		recvQ:         make(chan *packet, cfg.ReadQueue),
		hsInline:      newInlineLimiter(),
		readDeadline:  newDeadline(),
		appToken:      make(chan struct{}, 1),
		bgWake:        make(chan struct{}, 1),
		readErr:       make(chan error, 1),
		routes:        newRouteCache(),
		writeDeadline: newDeadline(),
		noDeadline:    newDeadline(),
		closed:        make(chan struct{}),
		index:         newSessionIndex(),
		sq:            newSendQueue(),
	}
	c.own = appReader{q: c.recvQ, deadline: c.readDeadline, closed: c.closed}
	if cfg.PresharedKey != nil {
		k := *cfg.PresharedKey
		c.psk = &k
	}
	// The first handshake's keys are made meanwhile, on another core
	// if there is one (handshake.go).
	c.spare = newSpareEntropy(cfg.Identity)
	c.freePkts = make(chan *packet, cfg.ReadQueue+2*readBatchSize)
	c.bufs.New = func() any { b := make([]byte, c.bufSize+tagLen); return &b }
	c.runBufs.New = func() any { b := make([]byte, 0, maxBatchRun*(c.bufSize+tagLen)); return &b }
	s.rs = c.newReadSet(s)
	c.sock.Store(s)
	if c.v2, err = newV2Endpoint(c); err != nil { // protocol v2 keys (proto_v2.go)
		z.close()
		return nil, err
	}
	c.log.Debug("vaultudp: listening", "addr", s.laddr, "mtu", mtu, "maxPayload", maxPayload,
		"identity", EncodePublicKey(c.hs.public))

	c.hsElems.New = func() any { return new(handshakeElem) }
	c.hw = newHSWork(0, c.retryAfter(), cfg.HandshakeTimeout) // handshake_workers.go
	if h := cfg.Logger.Handler(); cfg.Events != nil || h != slog.DiscardHandler {
		c.events, c.evDone = make(chan notice, eventQueueLen), make(chan struct{})
		if h != slog.DiscardHandler {
			c.log = slog.New(queuedHandler{h, c}) // events.go: the handler runs on the events goroutine
		}
		go c.dispatchEvents()
	}
	c.wg.Add(3)
	go c.readLoop(s)
	ticks, stop := c.clk.ticker(housekeepingEvery)
	go c.housekeeping(ticks, stop)
	go c.handshakeLoop()
	for _, pc := range cfg.Peers {
		if err := c.AddPeer(pc); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// now returns the coarse monotonic clock, in nanoseconds since the Conn
// started; it advances every housekeepingEvery.
func (c *Conn) now() int64 { return c.clock.Load() }

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() net.Addr {
	if !c.ok() {
		return nil
	}
	return c.sock.Load().LocalAddr()
}

// PublicKey returns the Conn's identity, for peers to pin.
func (c *Conn) PublicKey() ed25519.PublicKey {
	if !c.ok() {
		return nil
	}
	return c.hs.public
}

// MaxPayload returns the largest datagram that fits the Conn's default
// path MTU (Config.MTU, or the host's smallest interface MTU) less the IP,
// UDP and vaultudp overheads. Per peer, MaxPayloadTo tells what WriteTo
// sends; larger writes fail with an error matching ErrMessageTooLarge and
// syscall.EMSGSIZE.
func (c *Conn) MaxPayload() int {
	if !c.ok() {
		return 0
	}
	return c.maxPayload
}

func (c *Conn) isClosed() bool { return isClosed(c.closed) }

// ok reports whether c was made by Listen, Wrap or Dial. A zero Conn (or
// a nil *Conn) fails every method as a zero *net.UDPConn does: with
// syscall.EINVAL, never a panic.
func (c *Conn) ok() bool { return c != nil && c.closed != nil }

// errZeroConn is the error of op on a Conn that ok reports false for.
func errZeroConn(op string) error {
	return &net.OpError{Op: op, Net: "udp", Err: syscall.EINVAL}
}

// opError is the error of op, shaped as *net.UDPConn's are: Source is
// the local address, Addr a write's destination, except for the deadline
// setters ("set"), which put the local address in Addr.
func (c *Conn) opError(op string, addr net.Addr, err error) error {
	e := &net.OpError{Op: op, Net: "udp", Source: c.LocalAddr(), Err: err}
	switch op {
	case "write":
		if ua, ok := addr.(*net.UDPAddr); !ok || ua != nil { // no typed nil in an interface
			e.Addr = addr
		}
	case "set":
		e.Source, e.Addr = nil, e.Source
	}
	return e
}

// SetReadBuffer sets the socket's receive buffer, as on *net.UDPConn.
func (c *Conn) SetReadBuffer(bytes int) error {
	if !c.ok() {
		return errZeroConn("set")
	}
	return c.sock.Load().SetReadBuffer(bytes)
}

// SetWriteBuffer sets the socket's send buffer, as on *net.UDPConn.
func (c *Conn) SetWriteBuffer(bytes int) error {
	if !c.ok() {
		return errZeroConn("set")
	}
	return c.sock.Load().SetWriteBuffer(bytes)
}

// Close closes the Conn and its socket. Blocked calls return at once with
// errors wrapping net.ErrClosed; Close returns after every goroutine of
// the Conn has ended but the events goroutine, and after that one has
// handed what was queued before Close to Config.Events and the Logger's
// handler, for up to a second (eventsFlushWait): a callback that blocks
// longer (on the goroutine that called Close, say) gets the rest once it
// returns, after Close has, and the events goroutine ends then. Close called from such a callback does not wait for it. A
// second Close returns an error wrapping net.ErrClosed at once, as
// *net.UDPConn's does.
func (c *Conn) Close() error {
	if !c.ok() {
		return errZeroConn("close")
	}
	if !c.closing.CompareAndSwap(false, true) {
		return c.opError("close", nil, net.ErrClosed)
	}
	c.rebindMu.Lock()
	close(c.closed)
	c.sq.stop() // what writes queued goes out first (sendqueue.go)
	err := c.sock.Load().Close()
	c.rebindMu.Unlock()
	c.wg.Wait()
	c.stopOpeners() // after the readers: none shares a read out any more
	<-c.spare.done
	c.readDeadline.stop()
	c.writeDeadline.stop()
	c.z.close()
	c.v2.Close() // protocol v2 (proto_v2.go)
	for _, p := range c.peers.snapshot() {
		p.mu.Lock()
		p.closeLocked(net.ErrClosed)
		p.mu.Unlock()
	}
	if err != nil {
		c.log.Debug("vaultudp: closing socket", "err", err)
	}
	if c.evDone != nil && goroutineID() != c.evCaller.Load() {
		// What was queued before Close is delivered first, unless a
		// callback blocks: it may wait for the caller of Close.
		t := time.NewTimer(eventsFlushWait)
		select {
		case <-c.evDone:
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}
