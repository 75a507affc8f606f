package main

import (
	"container/list"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vaultudp/vaultudp"
)

// Flow limits. A flow is one client's path through the proxy, with its own
// upstream socket: the far end tells clients apart by the address their
// datagrams come from, so flows cannot share a socket (nor one Conn: on
// the client side the remote proxy tells flows apart by their source
// port; on the server side the service does). The server side shares one
// Conn for all its peers.
const (
	defaultMaxFlows = 512             // -max-flows
	defaultFlowIdle = 2 * time.Minute // -flow-idle
	flowQueue       = 64              // datagrams that wait for a flow's upstream to be ready
	readBuffer      = 4 << 20         // the plain listening socket's, for bursts of new clients
)

// proxyConfig says what a proxy does.
type proxyConfig struct {
	listen  string                  // where it listens
	to      netip.AddrPort          // client side: the remote proxy (sealed upstream)
	forward netip.AddrPort          // server side: the plain UDP service
	vault   func() *vaultudp.Config // the Config of each vaultudp Conn
	log     io.Writer
	logNext slog.Handler  // where the library's records go besides the status recorder (-v); nil: nowhere
	status  time.Duration // -status interval; 0: no table
	format  string        // -status-format
	trust   func() string // whom it trusts, for the status
	// maxFlows bounds the flows; at the bound the least recently used is
	// evicted. Zero: defaultMaxFlows.
	maxFlows int
	// idle is how long a flow lives without traffic either way. Zero:
	// defaultFlowIdle.
	idle time.Duration
	// control starts the control socket once the address is known; nil:
	// none.
	control func(addr net.Addr, snapshot func() status) (*control, error)
}

func runProxy(args []string, stdout, stderr io.Writer) error {
	stderr = &syncWriter{w: stderr}
	fs := newFlags("proxy", "-listen ADDR (-to REMOTE | -forward SERVICE) [flags]", stderr)
	listen := fs.String("listen", "", "address to listen on (plain UDP with -to, vaultudp with -forward)")
	to := fs.String("to", "", "client side: the remote 'vaultudp proxy -forward' to send sealed datagrams to")
	forward := fs.String("forward", "", "server side: the plain UDP service to deliver opened datagrams to")
	pf := addPeerFlags(fs, peerFlagOpts{
		keyHelp: "private identity key file, created (mode 0600) if it does not exist; default: vaultudp/identity.key in the user's config directory",
		server:  true,
		client:  true,
	})
	remoteKey := fs.String("remote-key", "", "with -to: pin the remote proxy's public key (else its known hosts entry, or the first key it presents, is trusted)")
	maxFlows := fs.Int("max-flows", defaultMaxFlows, "at most this many clients at once, each with its own upstream socket; beyond, the least recently active is dropped")
	flowIdle := fs.Duration("flow-idle", defaultFlowIdle, "a client's upstream socket is closed after this long without traffic")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := pf.loadConfig(fs, "proxy"); err != nil {
		return err
	}
	if *listen == "" || (*to == "") == (*forward == "") || fs.NArg() != 0 {
		return fmt.Errorf("%w: give -listen and exactly one of -to or -forward", errUsage)
	}
	if *remoteKey != "" && *to == "" {
		return fmt.Errorf("%w: -remote-key pins the key of the -to proxy: it needs -to", errUsage)
	}
	if *maxFlows < 1 || *flowIdle <= 0 {
		return fmt.Errorf("%w: -max-flows must be at least 1 and -flow-idle positive", errUsage)
	}
	laddr, is6, err := localAddr(*listen)
	if err != nil {
		return addrError("-listen", err)
	}
	pc := proxyConfig{listen: laddr, log: stderr, logNext: stderrHandler(*pf.verbose, stderr),
		status: *pf.status, format: *pf.statusFormat, maxFlows: *maxFlows, idle: *flowIdle}
	if *to != "" {
		// The sealed sockets are made per client, of the family of -to.
		if pc.to, err = resolveAddr(*to, false, false); err != nil {
			return addrError("-to "+*to, err)
		}
		is6 = pc.to.Addr().Is6()
	} else if pc.forward, err = resolveAddr(*forward, false, false); err != nil {
		return addrError("-forward "+*forward, err)
	}
	base, err := pf.config(is6, stderr)
	if err != nil {
		return err
	}
	if *remoteKey != "" {
		k, err := vaultudp.ParsePublicKey(*remoteKey)
		if err != nil {
			return fmt.Errorf("%w: -remote-key: %v", errUsage, err)
		}
		if err := addPeer(base, vaultudp.PeerConfig{Addr: pc.to, PublicKey: k}); err != nil {
			return fmt.Errorf("%w: -remote-key: %v (as -peer too: give its key once)", errUsage, err)
		}
	}
	if pc.to.IsValid() {
		if pf.trust.given || *pf.trust.any || *pf.trust.plaintext {
			return fmt.Errorf("%w: -allow, -allow-file, -allow-any and -allow-plaintext say whom a server accepts: with -to, the remote's key is pinned (-remote-key) or known (-known-hosts)", errUsage)
		}
		if base.Policy != vaultudp.Plaintext {
			ct, err := newClientTrust(base, pc.to, pf.knownHostsPath(), stderr)
			if err != nil {
				return err
			}
			ct.warn = true
			pc.trust = ct.describe
		} else {
			pc.trust = func() string { return "none: datagrams in clear (-policy plaintext)" }
		}
		// One peer per flow Conn, and a short queue: a flow serves one
		// client, and the proxy may hold hundreds.
		base.MaxPeers, base.ReadQueue = 1, flowQueue
	} else {
		mode, err := pf.trust.apply(base, stderr)
		if err != nil {
			return err
		}
		pc.trust = func() string { return mode }
	}
	if *pf.print {
		extra := map[string]string{"ListenAddress": *listen, "To": *to, "Forward": *forward}
		if *maxFlows != defaultMaxFlows {
			extra["MaxFlows"] = strconv.Itoa(*maxFlows)
		}
		if *flowIdle != defaultFlowIdle {
			extra["FlowIdle"] = flowIdle.String()
		}
		if *remoteKey != "" {
			pf.peers = append(pf.peers, *to+"="+*remoteKey) // [Peer] Endpoint = To pins it, as -remote-key
		}
		return pf.printConfig(stdout, "proxy", extra)
	}
	id, keyPath, err := pf.identity(stderr)
	if err != nil {
		return err
	}
	base.Identity = id
	fmt.Fprintf(stderr, "proxy identity %s (key file %s)\n", vaultudp.EncodePublicKey(id.Public().(ed25519.PublicKey)), keyPath)
	pc.vault = func() *vaultudp.Config { c := *base; return &c }
	pc.control = func(addr net.Addr, snapshot func() status) (*control, error) {
		return pf.startControl("proxy", addr, snapshot, stderr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	var stopped atomic.Value
	go func() {
		select {
		case s := <-sig:
			stopped.Store(s)
			cancel()
		case <-ctx.Done():
		}
	}()
	err = runProxyWith(ctx, pc, nil)
	if s, ok := stopped.Load().(os.Signal); ok && err == nil {
		fmt.Fprintf(stderr, "proxy stopped by %s; its flows were closed\n", signalName(s))
	}
	return err
}

// runProxyWith runs a proxy until ctx ends. ready, if not nil, receives the
// listening address once the proxy is up.
func runProxyWith(ctx context.Context, pc proxyConfig, ready chan<- net.Addr) error {
	if pc.maxFlows <= 0 {
		pc.maxFlows = defaultMaxFlows
	}
	if pc.idle <= 0 {
		pc.idle = defaultFlowIdle
	}
	if pc.trust == nil {
		pc.trust = func() string { return "as configured" }
	}
	r := &relay{pc: pc, flows: map[netip.AddrPort]*flow{}, slots: make(chan struct{}, pc.maxFlows)}
	if pc.to.IsValid() {
		return r.clientSide(ctx, ready)
	}
	return r.serverSide(ctx, ready)
}

// proxyCounts are the flow counters of a proxy's status.
type proxyCounts struct {
	Open      int    `json:"flows_open"`
	Max       int    `json:"flows_max"`
	Idle      string `json:"flow_idle"`
	Made      uint64 `json:"flows_made"`
	Expired   uint64 `json:"flows_expired"`   // closed after Idle without traffic
	Evicted   uint64 `json:"flows_evicted"`   // closed at Max for a new client, least recently active first
	Failed    uint64 `json:"flows_failed"`    // whose upstream socket could not be made
	QueueFull uint64 `json:"dropped_queue"`   // datagrams dropped: their flow's queue was full
	Foreign   uint64 `json:"dropped_foreign"` // upstream datagrams from others than the far end, dropped
	WriteErrs uint64 `json:"upstream_errors"` // writes upstream that failed
}

// relay copies datagrams from down to target through one upstream per
// client, and each upstream's replies back to its client.
type relay struct {
	pc      proxyConfig
	down    net.PacketConn
	downRec *recorder // down's log recorder when down is a vaultudp Conn
	target  netip.AddrPort
	dial    func() (*upstream, error)

	mu    sync.Mutex
	flows map[netip.AddrPort]*flow
	lru   list.List // of *flow, the most recently active first

	wg    sync.WaitGroup // the flows' goroutines
	slots chan struct{}  // one per upstream socket open: at most maxFlows, closing ones included

	made, expired, evicted, failed, queueFull, foreign, writeErrs atomic.Uint64
}

// upstream is a flow's socket towards the far end.
type upstream struct {
	read  func([]byte) (int, netip.AddrPort, error)
	write func([]byte) error
	close func() error
	conn  *vaultudp.Conn // client side: the flow's Conn, for the status
	rec   *recorder      // and its log recorder
}

// flow is one client's path through the proxy.
type flow struct {
	client   netip.AddrPort
	q        chan []byte   // datagrams from the client, bounded
	stop     chan struct{} // closed when the flow ends
	stopOnce sync.Once
	elem     *list.Element // in relay.lru, under relay.mu
	last     atomic.Int64  // Unix nanoseconds of the last traffic either way

	mu sync.Mutex
	up *upstream // nil until made
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// clientSide: plain datagrams in on listen, sealed out to pc.to from one
// vaultudp Conn per client address, each trusting only the remote's key;
// replies go back in clear.
func (r *relay) clientSide(ctx context.Context, ready chan<- net.Addr) error {
	down, err := net.ListenPacket("udp", r.pc.listen)
	if err != nil {
		return err
	}
	down.(*net.UDPConn).SetReadBuffer(readBuffer)
	r.down, r.target = down, r.pc.to
	network, wild := anyAddr(r.pc.to)
	r.dial = func() (*upstream, error) {
		cfg := r.pc.vault()
		rec := newRecorder(r.pc.logNext)
		if cfg.Logger == nil {
			cfg.Logger = rec.logger()
		}
		cfg.Events = rec.event
		c, err := vaultudp.Listen(network, wild, cfg)
		if err != nil {
			return nil, err
		}
		return &upstream{
			read:  c.ReadFromUDPAddrPort,
			write: func(b []byte) error { _, err := c.WriteToUDPAddrPort(b, r.pc.to); return err },
			close: c.Close,
			conn:  c, rec: rec,
		}, nil
	}
	return r.run(ctx, ready)
}

// serverSide: sealed datagrams in on one vaultudp Conn, plain out to
// pc.forward from one UDP socket per peer, connected to the service so
// that the kernel drops what anyone else sends to it; replies go back
// sealed.
func (r *relay) serverSide(ctx context.Context, ready chan<- net.Addr) error {
	cfg := r.pc.vault()
	r.downRec = newRecorder(r.pc.logNext)
	if cfg.Logger == nil {
		cfg.Logger = r.downRec.logger()
	}
	cfg.Events = r.downRec.event
	down, err := vaultudp.Listen("udp", r.pc.listen, cfg)
	if err != nil {
		return err
	}
	r.down, r.target = down, r.pc.forward
	network, _ := anyAddr(r.pc.forward)
	service := net.UDPAddrFromAddrPort(r.pc.forward)
	r.dial = func() (*upstream, error) {
		uc, err := net.DialUDP(network, nil, service)
		if err != nil {
			return nil, err
		}
		return &upstream{
			read:  uc.ReadFromUDPAddrPort,
			write: func(b []byte) error { _, err := uc.Write(b); return err },
			close: uc.Close,
		}, nil
	}
	return r.run(ctx, ready)
}

// readerAddrPort is what both kinds of down socket offer.
type readerAddrPort interface {
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
}

func (r *relay) run(ctx context.Context, ready chan<- net.Addr) error {
	done := make(chan struct{})
	var bg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { r.down.Close() })
	defer stop()
	defer func() {
		close(done)
		r.down.Close()
		r.mu.Lock()
		all := make([]*flow, 0, len(r.flows))
		for _, f := range r.flows {
			all = append(all, f)
		}
		r.mu.Unlock()
		for _, f := range all {
			r.remove(f, nil)
		}
		r.wg.Wait()
		bg.Wait()
	}()
	snapshot := r.snapshot
	var ctl *control
	if r.pc.control != nil {
		var err error
		if ctl, err = r.pc.control(r.down.LocalAddr(), snapshot); err != nil {
			return err
		}
		defer ctl.close()
	}
	bg.Go(func() { statusLoop(r.pc.log, r.pc.status, r.pc.format, done, snapshot) })
	bg.Go(func() { r.sweep(done) })
	if ready != nil {
		ready <- r.down.LocalAddr()
	}
	fmt.Fprintf(r.pc.log, "proxy listening on %v, to %v; trust: %s\n", r.down.LocalAddr(), r.target, r.pc.trust())
	down := r.down.(readerAddrPort)
	buf := make([]byte, 65536)
	for {
		n, client, err := down.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		f := r.flowOf(normAddr(client))
		f.touch()
		select {
		case f.q <- slices.Clone(buf[:n]):
		default:
			r.queueFull.Add(1)
		}
	}
}

// flowOf returns the flow of client, making one if it has none: the
// upstream is made on the flow's own goroutine, so that the read loop
// goes on reading while hundreds of new clients arrive at once. At
// maxFlows the least recently active flow is evicted.
func (r *relay) flowOf(client netip.AddrPort) *flow {
	r.mu.Lock()
	f := r.flows[client]
	if f != nil {
		r.lru.MoveToFront(f.elem)
		r.mu.Unlock()
		return f
	}
	var victim *flow
	if len(r.flows) >= r.pc.maxFlows {
		victim = r.lru.Back().Value.(*flow)
		r.forgetLocked(victim)
	}
	f = &flow{client: client, q: make(chan []byte, flowQueue), stop: make(chan struct{})}
	f.elem = r.lru.PushFront(f)
	r.flows[client] = f
	r.mu.Unlock()
	r.made.Add(1)
	if victim != nil {
		r.remove(victim, &r.evicted)
	}
	r.wg.Go(func() { r.serve(f) })
	return f
}

// forgetLocked takes f out of the table; r.mu is held.
func (r *relay) forgetLocked(f *flow) bool {
	if r.flows[f.client] != f {
		return false
	}
	delete(r.flows, f.client)
	r.lru.Remove(f.elem)
	return true
}

// remove ends f, counting it in counter (if not nil) the first time.
func (r *relay) remove(f *flow, counter *atomic.Uint64) {
	r.mu.Lock()
	r.forgetLocked(f)
	r.mu.Unlock()
	f.stopOnce.Do(func() {
		close(f.stop)
		if counter != nil {
			counter.Add(1)
		}
	})
}

// serve makes f's upstream, then sends f's datagrams to the far end until
// f ends; its replies go back to the client meanwhile.
func (r *relay) serve(f *flow) {
	// An evicted flow's socket closes on its own goroutine: wait for it,
	// so that the sockets never outnumber maxFlows.
	select {
	case r.slots <- struct{}{}:
	case <-f.stop:
		return
	}
	defer func() { <-r.slots }()
	up, err := r.dial()
	if err != nil {
		r.failed.Add(1)
		fmt.Fprintf(r.pc.log, "proxy: upstream for %v: %v\n", f.client, err)
		r.remove(f, nil)
		return
	}
	f.mu.Lock()
	f.up = up
	f.mu.Unlock()
	var back sync.WaitGroup
	back.Go(func() { r.back(f, up) })
	defer func() {
		up.close() // a Conn's Close sends what waits first
		back.Wait()
	}()
	for {
		select {
		case <-f.stop:
			return
		case d := <-f.q:
			if err := up.write(d); err != nil {
				r.writeErrs.Add(1)
				if up.rec != nil && !errors.Is(err, vaultudp.ErrPeerRejected) {
					if fl, ok := up.rec.last(r.target); ok {
						err = fmt.Errorf("%w; %s", err, fl.reason)
					}
				}
				fmt.Fprintf(r.pc.log, "proxy: to %v for %v: %v\n", r.target, f.client, err)
			}
		}
	}
}

// back copies replies from f's upstream to its client until the upstream
// is closed. Only the far end's datagrams pass: the Conn of a client-side
// flow refuses every other key already (and a connected socket every
// other source), so a datagram from elsewhere is counted, not relayed.
func (r *relay) back(f *flow, up *upstream) {
	buf := make([]byte, 65536)
	down := r.down.(readerAddrPort)
	for {
		n, from, err := up.read(buf)
		if errors.Is(err, syscall.ECONNREFUSED) {
			// The service's port was closed when a datagram reached it
			// (ICMP port unreachable, reported on a connected socket): it
			// may come back, and the flow with it.
			continue
		}
		if err != nil {
			r.remove(f, nil)
			return
		}
		if normAddr(from) != r.target {
			r.foreign.Add(1)
			continue
		}
		f.touch()
		if _, err := down.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
			fmt.Fprintf(r.pc.log, "proxy: back to %v: %v\n", f.client, err)
		}
	}
}

// sweep ends the flows idle for longer than pc.idle until done is closed.
func (r *relay) sweep(done <-chan struct{}) {
	t := time.NewTicker(max(r.pc.idle/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			var idle []*flow
			r.mu.Lock()
			for _, f := range r.flows { // at most maxFlows, a few times per idle period
				if now.Sub(time.Unix(0, f.last.Load())) > r.pc.idle {
					idle = append(idle, f)
				}
			}
			r.mu.Unlock()
			for _, f := range idle {
				r.remove(f, &r.expired)
			}
		}
	}
}

// snapshot is the proxy's status: its counters, and its Conns (the one
// listening on the server side, one per flow on the client side).
func (r *relay) snapshot() status {
	st := status{Command: "proxy", Trust: r.pc.trust()}
	r.mu.Lock()
	open := len(r.flows)
	flows := make([]*flow, 0, open)
	for _, f := range r.flows {
		flows = append(flows, f)
	}
	r.mu.Unlock()
	st.Proxy = &proxyCounts{
		Open: open, Max: r.pc.maxFlows, Idle: r.pc.idle.String(),
		Made: r.made.Load(), Expired: r.expired.Load(), Evicted: r.evicted.Load(), Failed: r.failed.Load(),
		QueueFull: r.queueFull.Load(), Foreign: r.foreign.Load(), WriteErrs: r.writeErrs.Load(),
	}
	if c, ok := r.down.(*vaultudp.Conn); ok {
		st.Conns = append(st.Conns, snapConn(c, r.downRec, "proxy"))
	}
	var cs []connStatus
	for _, f := range flows {
		f.mu.Lock()
		up := f.up
		f.mu.Unlock()
		if up != nil && up.conn != nil {
			cs = append(cs, snapConn(up.conn, up.rec, "flow of client "+f.client.String()+":"))
		}
	}
	slices.SortFunc(cs, func(a, b connStatus) int { return strings.Compare(a.Label, b.Label) })
	st.Conns = append(st.Conns, cs...)
	return st
}

// anyAddr is the wildcard address of the family of a.
func anyAddr(a netip.AddrPort) (network, addr string) {
	if a.Addr().Is6() {
		return "udp6", "[::]:0"
	}
	return "udp4", "0.0.0.0:0"
}
