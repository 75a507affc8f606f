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
	"strings"
	"sync"
	"time"

	"github.com/vaultudp/vaultudp"
)

// peerFlags are the flags listen, send and proxy share.
type peerFlags struct {
	key     *string
	policy  *string
	bind    *string // nil: the command has no -bind
	peers   []string
	verbose *bool
	status  *time.Duration // nil: the command has no -status
	allow   *allowList     // nil: the command has no -allow
}

// peerFlagOpts says which of the shared flags a command has.
type peerFlagOpts struct {
	keyHelp   string
	bind      bool
	bindHelp  string
	bindValue string
	server    bool // -allow, -allow-file and -status
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
	if o.server {
		pf.allow = addAllowFlags(fs)
		pf.status = fs.Duration("status", 0, "print a table of the peers to stderr at this interval (e.g. 10s); 0: never")
	}
	return pf
}

// config returns the Config the flags describe, without Identity and
// Logger. prefer6 says which address family -peer host names resolve to
// first (the family of the local socket).
func (pf *peerFlags) config(prefer6 bool, stderr io.Writer) (*vaultudp.Config, error) {
	cfg := &vaultudp.Config{}
	var err error
	if cfg.Policy, err = vaultudp.ParsePolicy(*pf.policy); err != nil {
		return nil, fmt.Errorf("%w: -policy: %v", errUsage, err)
	}
	for _, s := range pf.peers {
		pc, err := parsePeer(s, prefer6)
		if err != nil {
			return nil, fmt.Errorf("%w: -peer %q: %v", errUsage, s, err)
		}
		if err := addPeer(cfg, pc); err != nil {
			return nil, fmt.Errorf("%w: -peer %q: %v", errUsage, s, err)
		}
	}
	if pf.allow != nil {
		pf.allow.apply(cfg, stderr)
	}
	return cfg, nil
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
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg, err := pf.config(is6, stderr)
	if err != nil {
		return err
	}
	id, keyPath, err := persistentIdentity(*pf.key, stderr)
	if err != nil {
		return err
	}
	cfg.Identity = id
	rec := newRecorder(stderrHandler(*pf.verbose, stderr))
	cfg.Logger = rec.logger()
	c, err := vaultudp.Listen("udp", laddr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stderr, "listening on %v, identity %s (key file %s)\n", c.LocalAddr(), vaultudp.EncodePublicKey(c.PublicKey()), keyPath)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	wg.Go(func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		defer signal.Stop(sig)
		select {
		case <-sig:
			c.Close()
		case <-done:
		}
	})
	wg.Go(func() {
		statusLoop(stderr, *pf.status, done, func() []watched { return []watched{{c, rec, "listen"}} })
	})
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil // closed by the interrupt
			}
			return err
		}
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
	})
	timeout := fs.Duration("timeout", vaultudp.DefaultHandshakeTimeout, "how long the handshake may take")
	if err := parse(fs, args); err != nil {
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
		return fmt.Errorf("%w: -bind: %v", errUsage, err)
	}
	to, err := resolveAddr(fs.Arg(0), is6, false)
	if err != nil {
		return fmt.Errorf("%w: destination %q: %v", errUsage, fs.Arg(0), err)
	}
	cfg, err := pf.config(is6, stderr)
	if err != nil {
		return err
	}
	if *pf.key != "" {
		if cfg.Identity, err = vaultudp.LoadPrivateKey(*pf.key); err != nil {
			return err
		}
	} else {
		cfg.Identity = vaultudp.GenerateIdentity()
	}
	cfg.HandshakeTimeout = *timeout
	rec := newRecorder(stderrHandler(*pf.verbose, stderr))
	cfg.Logger = rec.logger()
	c, err := vaultudp.Listen("udp", laddr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if cfg.Policy != vaultudp.Plaintext {
		self := vaultudp.EncodePublicKey(cfg.Identity.Public().(ed25519.PublicKey))
		ctx, cancel := context.WithTimeout(context.Background(), *timeout+time.Second)
		defer cancel()
		fmt.Fprintf(stderr, "handshake with %v from %v, identity %s...\n", to, c.LocalAddr(), self)
		if err := c.Handshake(ctx, to); err != nil {
			err = handshakeError(err, to, self, rec)
			if cfg.Policy != vaultudp.Opportunistic {
				return err
			}
			fmt.Fprintf(stderr, "warning: %v; sending in plaintext (-policy opportunistic)\n", err)
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
func handshakeError(err error, to netip.AddrPort, self string, rec *recorder) error {
	if errors.Is(err, vaultudp.ErrPeerRejected) {
		return fmt.Errorf("%w (the peer's key is not the one pinned with -peer)", err)
	}
	if f, ok := rec.last(to); ok && strings.Contains(f.reason, "refused") {
		return fmt.Errorf("%w; %s", err, f.reason)
	}
	return fmt.Errorf("%w (is 'vaultudp listen' running there, and does it accept this identity, %s? a listener with -allow refuses other keys and says so with -v)", err, self)
}
