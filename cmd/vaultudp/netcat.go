package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vaultudp/vaultudp"
)

// peerFlags are the flags listen, send and proxy share.
type peerFlags struct {
	key      *string
	policy   *string
	bind     *string // nil: the command has no -bind
	peers    []string
	verbose  *bool
	confFile *string
	print    *bool // -print-config

	// Servers (listen, proxy): whom they accept, and how they report.
	trust        *serverTrust // nil: a client command
	status       *time.Duration
	statusFormat *string
	control      *string

	// Clients (send, proxy -to): where servers' keys are remembered.
	knownHosts *string

	inlineKey ed25519.PrivateKey // a config file's PrivateKey
	confPath  string
}

// peerFlagOpts says which of the shared flags a command has.
type peerFlagOpts struct {
	keyHelp   string
	bind      bool
	bindHelp  string
	bindValue string
	server    bool // -allow, -allow-file, -allow-any, -status, -control
	client    bool // -known-hosts
}

func addPeerFlags(fs *flag.FlagSet, o peerFlagOpts) *peerFlags {
	pf := &peerFlags{}
	pf.key = fs.String("key", "", o.keyHelp)
	pf.policy = fs.String("policy", "require-encryption", "require-encryption, opportunistic or plaintext")
	if o.bind {
		pf.bind = fs.String("bind", o.bindValue, o.bindHelp)
	}
	fs.Func("peer", "a peer, HOST:PORT or HOST:PORT=PUBKEY to pin its key (repeatable); it is contacted at start", func(s string) error {
		pf.peers = append(pf.peers, s)
		return nil
	})
	pf.verbose = fs.Bool("v", false, "log the library's events (handshakes, refusals, timeouts) to stderr")
	pf.confFile = fs.String("config", "", "read settings from this file ([Interface] and [Peer] sections, as wg-quick's; see README); flags given on the command line win")
	pf.print = fs.Bool("print-config", false, "print the configuration file that these flags (and -config) describe, and exit")
	if o.server {
		pf.trust = addServerTrustFlags(fs)
		pf.status = fs.Duration("status", 0, "print the status of the peers to stderr at this interval (e.g. 10s); 0: never ('vaultudp show' asks at any time)")
		pf.statusFormat = fs.String("status-format", "text", "-status's format: text (a table, as wg show) or json (one object a line)")
		pf.control = fs.String("control", "", "the Unix socket 'vaultudp show' asks; default: a socket named after the command and address in $"+runtimeDirEnv+", $XDG_RUNTIME_DIR/vaultudp or the temporary directory; off: none")
	}
	if o.client {
		pf.knownHosts = fs.String("known-hosts", "", "the file where servers' keys are remembered on first contact, as ssh's known_hosts; default: $"+knownHostsEnv+", else vaultudp/known_hosts in the user's config directory")
	}
	return pf
}

// knownHostsPath is the known hosts file the flags name.
func (pf *peerFlags) knownHostsPath() string {
	if *pf.knownHosts != "" {
		return *pf.knownHosts
	}
	return defaultKnownHosts()
}

// config returns the Config the flags describe, without Identity, Logger
// and trust rules. prefer6 says which address family -peer host names
// resolve to first (the family of the local socket).
func (pf *peerFlags) config(prefer6 bool, stderr io.Writer) (*vaultudp.Config, error) {
	cfg := &vaultudp.Config{}
	var err error
	if cfg.Policy, err = vaultudp.ParsePolicy(*pf.policy); err != nil {
		return nil, fmt.Errorf("%w: -policy: %v", errUsage, err)
	}
	for _, s := range pf.peers {
		pc, err := parsePeer(s, prefer6)
		if err != nil {
			return nil, addrError("-peer "+strconv.Quote(s), err)
		}
		if err := addPeer(cfg, pc); err != nil {
			return nil, fmt.Errorf("%w: -peer %q: %v", errUsage, s, err)
		}
	}
	if pf.statusFormat != nil && *pf.statusFormat != "text" && *pf.statusFormat != "json" {
		return nil, fmt.Errorf("%w: -status-format %q: want text or json", errUsage, *pf.statusFormat)
	}
	return cfg, nil
}

// identity is the persistent identity of a server command: a config
// file's PrivateKey, else -key (created if missing), else the default key
// file.
func (pf *peerFlags) identity(stderr io.Writer) (ed25519.PrivateKey, string, error) {
	if pf.inlineKey != nil {
		return pf.inlineKey, pf.confPath + " (PrivateKey)", nil
	}
	return persistentIdentity(*pf.key, stderr)
}

// addrError is the error of an address that does not resolve: a usage
// error when it is malformed, a plain one (exit 1) when the name service
// failed, since the command line was right.
func addrError(what string, err error) error {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("%s: %v", what, err)
	}
	return fmt.Errorf("%w: %s: %v", errUsage, what, err)
}

// addPeer adds pc to cfg.Peers unless its address is there already.
func addPeer(cfg *vaultudp.Config, pc vaultudp.PeerConfig) error {
	for _, p := range cfg.Peers {
		if normAddr(p.Addr) == normAddr(pc.Addr) {
			return fmt.Errorf("%v is given twice", pc.Addr)
		}
	}
	cfg.Peers = append(cfg.Peers, pc)
	return nil
}

// parsePeer parses HOST:PORT or HOST:PORT=PUBKEY.
func parsePeer(s string, prefer6 bool) (vaultudp.PeerConfig, error) {
	addr, key, hasKey := strings.Cut(s, "=")
	ap, err := resolveAddr(addr, prefer6, false)
	if err != nil {
		return vaultudp.PeerConfig{}, err
	}
	pc := vaultudp.PeerConfig{Addr: ap}
	if hasKey {
		if pc.PublicKey, err = vaultudp.ParsePublicKey(key); err != nil {
			return vaultudp.PeerConfig{}, err
		}
	}
	return pc, nil
}

// resolveAddr resolves HOST:PORT, where HOST is an IP or a host name and
// PORT a number or a service name, to one address: of the preferred
// family (IPv6 if prefer6, else IPv4) if the name has one, else of the
// other. Port 0 is refused unless zeroPort.
func resolveAddr(s string, prefer6, zeroPort bool) (netip.AddrPort, error) {
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%v (want HOST:PORT)", err)
	}
	if host == "" {
		return netip.AddrPort{}, fmt.Errorf("%q has no host (want HOST:PORT)", s)
	}
	nets := []string{"udp4", "udp6"}
	if prefer6 {
		nets[0], nets[1] = nets[1], nets[0]
	}
	var first error
	for _, n := range nets {
		ua, err := net.ResolveUDPAddr(n, s)
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		ap := normAddr(ua.AddrPort())
		if ap.Port() == 0 && !zeroPort {
			return netip.AddrPort{}, fmt.Errorf("%q: port 0 (want HOST:PORT with a non-zero port)", s)
		}
		return ap, nil
	}
	return netip.AddrPort{}, first
}

// localAddr resolves a local address to listen on: an empty host (":0")
// stays as it is (every interface), a host name is resolved, IPv4 first.
// It also says whether the socket is IPv6, so that the peers' host names
// resolve to the family that fits it.
func localAddr(s string) (addr string, is6 bool, err error) {
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return "", false, fmt.Errorf("local address: %v (want HOST:PORT or :PORT)", err)
	}
	if host == "" {
		return s, false, nil
	}
	ap, err := resolveAddr(s, false, true)
	if err != nil {
		return "", false, fmt.Errorf("local address: %w", err)
	}
	return ap.String(), ap.Addr().Is6(), nil
}

// syncWriter serialises writes from several goroutines (log records,
// status tables, messages) to one writer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func runListen(args []string, stdout, stderr io.Writer) error {
	stderr = &syncWriter{w: stderr}
	fs := newFlags("listen", "[flags] ADDR  (or -bind ADDR)", stderr)
	pf := addPeerFlags(fs, peerFlagOpts{
		keyHelp:  "private identity key file, created (mode 0600) if it does not exist; default: vaultudp/identity.key in the user's config directory",
		bind:     true,
		bindHelp: "the local address to listen on (the same as ADDR)",
		server:   true,
	})
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := pf.loadConfig(fs, "listen"); err != nil {
		return err
	}
	addr := *pf.bind
	switch {
	case fs.NArg() > 1:
		return fmt.Errorf("%w: give one address to listen on", errUsage)
	case fs.NArg() == 1 && addr != "" && addr != fs.Arg(0):
		return fmt.Errorf("%w: two addresses to listen on (-bind %s and %s): give one", errUsage, addr, fs.Arg(0))
	case fs.NArg() == 1:
		addr = fs.Arg(0)
	case addr == "":
		return fmt.Errorf("%w: give the address to listen on, e.g. 127.0.0.1:11000", errUsage)
	}
	laddr, is6, err := localAddr(addr)
	if err != nil {
		return addrError("local address", err)
	}
	cfg, err := pf.config(is6, stderr)
	if err != nil {
		return err
	}
	mode, err := pf.trust.apply(cfg, stderr)
	if err != nil {
		return err
	}
	if *pf.print {
		return pf.printConfig(stdout, "listen", map[string]string{"ListenAddress": addr})
	}
	id, keyPath, err := pf.identity(stderr)
	if err != nil {
		return err
	}
	cfg.Identity = id
	rec := newRecorder(stderrHandler(*pf.verbose, stderr))
	cfg.Logger = rec.logger()
	cfg.Events = rec.event
	c, err := vaultudp.Listen("udp", laddr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stderr, "listening on %v, identity %s (key file %s); trust: %s\n", c.LocalAddr(), vaultudp.EncodePublicKey(c.PublicKey()), keyPath, mode)
	snapshot := func() status {
		return status{Command: "listen", Trust: mode, Conns: []connStatus{snapConn(c, rec, "listen")}}
	}
	ctl, err := pf.startControl("listen", c.LocalAddr(), snapshot, stderr)
	if err != nil {
		return err
	}
	defer ctl.close()
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	var stopped atomic.Value // the signal that stopped it
	wg.Go(func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		select {
		case s := <-sig:
			stopped.Store(s)
			c.Close() // flushes what waits to be sent, then unblocks the read
		case <-done:
		}
	})
	wg.Go(func() { statusLoop(stderr, *pf.status, *pf.statusFormat, done, snapshot) })
	buf := make([]byte, 65536)
	received := 0
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				if s, ok := stopped.Load().(os.Signal); ok {
					fmt.Fprintf(stderr, "stopped by %s after %d %s\n", signalName(s), received, plural(received, "datagram", "datagrams"))
				}
				return nil // closed by a signal
			}
			return err
		}
		received++
		fmt.Fprintf(stdout, "%v %s\n", from, buf[:n])
	}
}

func runSend(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("send", "[flags] ADDR", stderr)
	pf := addPeerFlags(fs, peerFlagOpts{
		keyHelp:   "private identity key file (from 'vaultudp keygen'); default: a fresh identity",
		bind:      true,
		bindHelp:  "the local address to send from",
		bindValue: "0.0.0.0:0",
		client:    true,
	})
	timeout := fs.Duration("timeout", vaultudp.DefaultHandshakeTimeout, "how long the handshake may take")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := pf.loadConfig(fs, "send"); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: give the address to send to, e.g. 127.0.0.1:11000", errUsage)
	}
	if *timeout <= 0 {
		return fmt.Errorf("%w: -timeout %v: want > 0", errUsage, *timeout)
	}
	laddr, is6, err := localAddr(*pf.bind)
	if err != nil {
		return addrError("-bind", err)
	}
	to, err := resolveAddr(fs.Arg(0), is6, false)
	if err != nil {
		return addrError("destination "+strconv.Quote(fs.Arg(0)), err)
	}
	cfg, err := pf.config(is6, stderr)
	if err != nil {
		return err
	}
	if *pf.print {
		return pf.printConfig(stdout, "send", nil)
	}
	var ct *clientTrust
	if cfg.Policy != vaultudp.Plaintext {
		if ct, err = newClientTrust(cfg, to, pf.knownHostsPath(), stderr); err != nil {
			return err
		}
	}
	switch {
	case pf.inlineKey != nil:
		cfg.Identity = pf.inlineKey
	case *pf.key != "":
		if cfg.Identity, err = vaultudp.LoadPrivateKey(*pf.key); err != nil {
			return err
		}
	default:
		cfg.Identity = vaultudp.GenerateIdentity()
	}
	cfg.HandshakeTimeout = *timeout
	rec := newRecorder(stderrHandler(*pf.verbose, stderr))
	cfg.Logger = rec.logger()
	cfg.Events = rec.event
	c, err := vaultudp.Listen("udp", laddr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if ct != nil {
		self := vaultudp.EncodePublicKey(cfg.Identity.Public().(ed25519.PublicKey))
		ctx, cancel := context.WithTimeout(context.Background(), *timeout+time.Second)
		defer cancel()
		fmt.Fprintf(stderr, "handshake with %v from %v, identity %s; %s\n", to, c.LocalAddr(), self, ct.describe())
		if err := c.Handshake(ctx, to); err != nil {
			err = handshakeError(err, to, self, rec, ct)
			if cfg.Policy != vaultudp.Opportunistic {
				return err
			}
			fmt.Fprintf(stderr, "warning: %v; sending in plaintext (-policy opportunistic)\n", err)
		} else if *pf.verbose {
			for _, p := range c.Peers() {
				if normAddr(p.Addr) == normAddr(to) && p.PublicKey != nil {
					fmt.Fprintf(stderr, "session with %v, key %s\n", to, vaultudp.EncodePublicKey(p.PublicKey))
				}
			}
		}
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if _, err := c.WriteToUDPAddrPort(sc.Bytes(), to); err != nil {
			return err
		}
	}
	return sc.Err()
}

// handshakeError explains a failed handshake: the library's error, the
// refusal it logged if there was one, and what to check.
func handshakeError(err error, to netip.AddrPort, self string, rec *recorder, ct *clientTrust) error {
	if changed := ct.keyChanged(); changed != nil {
		return fmt.Errorf("handshake refused: %w", changed)
	}
	if errors.Is(err, vaultudp.ErrPeerRejected) {
		return fmt.Errorf("%w (the peer's key is not the one pinned with -peer)", err)
	}
	if f, ok := rec.last(to); ok && strings.Contains(f.reason, "refused") {
		return fmt.Errorf("%w; %s", err, f.reason)
	}
	return fmt.Errorf("%w (is 'vaultudp listen' running there, and does it accept this identity, %s? a listener accepts only the keys given with -allow, and says so with -v)", err, self)
}

// signalName is the name operators know a signal by.
func signalName(s os.Signal) string {
	switch s {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}
