package main

import (
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
	"strings"
	"sync"
	"time"

	"github.com/vaultudp/vaultudp"
)

// proxyIdle is how long a client's upstream socket lives without traffic.
const proxyIdle = 2 * time.Minute

// proxyConfig says what a proxy does.
type proxyConfig struct {
	listen  string                  // where it listens
	to      netip.AddrPort          // client side: the remote proxy (sealed upstream)
	forward netip.AddrPort          // server side: the plain UDP service
	vault   func() *vaultudp.Config // the Config of each vaultudp Conn
	log     io.Writer
	logNext slog.Handler  // where the library's records go besides the status recorder (-v); nil: nowhere
	status  time.Duration // -status interval; 0: no table
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
	})
	remoteKey := fs.String("remote-key", "", "with -to: pin the remote proxy's public key")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *listen == "" || (*to == "") == (*forward == "") || fs.NArg() != 0 {
		return fmt.Errorf("%w: give -listen and exactly one of -to or -forward", errUsage)
	}
	if *remoteKey != "" && *to == "" {
		return fmt.Errorf("%w: -remote-key pins the key of the -to proxy: it needs -to", errUsage)
	}
	laddr, is6, err := localAddr(*listen)
	if err != nil {
		return fmt.Errorf("%w: -listen: %v", errUsage, err)
	}
	pc := proxyConfig{listen: laddr, log: stderr, logNext: stderrHandler(*pf.verbose, stderr), status: *pf.status}
	if *to != "" {
		// The sealed sockets are made per client, of the family of -to.
		if pc.to, err = resolveAddr(*to, false, false); err != nil {
			return fmt.Errorf("%w: -to %q: %v", errUsage, *to, err)
		}
		is6 = pc.to.Addr().Is6()
	} else if pc.forward, err = resolveAddr(*forward, false, false); err != nil {
		return fmt.Errorf("%w: -forward %q: %v", errUsage, *forward, err)
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
	id, keyPath, err := persistentIdentity(*pf.key, stderr)
	if err != nil {
		return err
	}
	base.Identity = id
	fmt.Fprintf(stderr, "proxy identity %s (key file %s)\n", vaultudp.EncodePublicKey(id.Public().(ed25519.PublicKey)), keyPath)
	pc.vault = func() *vaultudp.Config { c := *base; return &c }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return runProxyWith(ctx, pc, nil)
}

// runProxyWith runs a proxy until ctx ends. ready, if not nil, receives the
// listening address once the proxy is up.
func runProxyWith(ctx context.Context, pc proxyConfig, ready chan<- net.Addr) error {
	if pc.to.IsValid() {
		return proxyClientSide(ctx, pc, ready)
	}
	return proxyServerSide(ctx, pc, ready)
}

// vaultConfig returns the Config of a new vaultudp Conn and the recorder
// of its log.
func (pc *proxyConfig) vaultConfig() (*vaultudp.Config, *recorder) {
	cfg := pc.vault()
	rec := newRecorder(pc.logNext)
	if cfg.Logger == nil {
		cfg.Logger = rec.logger()
	}
	return cfg, rec
}

// flow is one client's path through the proxy: its own upstream socket, so
// that replies find their way back to it.
type flow struct {
	up       net.PacketConn // sealed (client side) or plain (server side)
	rec      *recorder      // client side: up's log
	lastUsed time.Time
}

// anyAddr is the wildcard address of the family of a.
func anyAddr(a netip.AddrPort) (network, addr string) {
	if a.Addr().Is6() {
		return "udp6", "[::]:0"
	}
	return "udp4", "0.0.0.0:0"
}

// proxyClientSide: plain datagrams in on listen, sealed out to pc.to from
// one vaultudp Conn per client address; replies go back in clear.
func proxyClientSide(ctx context.Context, pc proxyConfig, ready chan<- net.Addr) error {
	down, err := net.ListenPacket("udp", pc.listen)
	if err != nil {
		return err
	}
	network, wild := anyAddr(pc.to)
	return relay(ctx, pc, down, nil, ready, func() (net.PacketConn, *recorder, error) {
		cfg, rec := pc.vaultConfig()
		c, err := vaultudp.Listen(network, wild, cfg)
		if err != nil {
			return nil, nil, err
		}
		return c, rec, nil
	}, net.UDPAddrFromAddrPort(pc.to))
}

// proxyServerSide: sealed datagrams in on a vaultudp Conn, plain out to
// pc.forward from one UDP socket per peer; replies go back sealed.
func proxyServerSide(ctx context.Context, pc proxyConfig, ready chan<- net.Addr) error {
	cfg, rec := pc.vaultConfig()
	down, err := vaultudp.Listen("udp", pc.listen, cfg)
	if err != nil {
		return err
	}
	network, wild := anyAddr(pc.forward)
	return relay(ctx, pc, down, rec, ready, func() (net.PacketConn, *recorder, error) {
		up, err := net.ListenPacket(network, wild)
		return up, nil, err
	}, net.UDPAddrFromAddrPort(pc.forward))
}

// relay copies datagrams from down to target through a per-client
// upstream socket, and each upstream's replies back to its client. rec is
// down's log recorder when down is a vaultudp Conn.
func relay(ctx context.Context, pc proxyConfig, down net.PacketConn, rec *recorder, ready chan<- net.Addr, dial func() (net.PacketConn, *recorder, error), target net.Addr) error {
	var (
		mu    sync.Mutex
		flows = map[string]*flow{}
		wg    sync.WaitGroup
		done  = make(chan struct{})
	)
	stop := context.AfterFunc(ctx, func() { down.Close() })
	defer stop()
	defer func() {
		close(done)
		down.Close()
		mu.Lock()
		for _, f := range flows {
			f.up.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	wg.Go(func() {
		statusLoop(pc.log, pc.status, done, func() []watched {
			var ws []watched
			if c, ok := down.(*vaultudp.Conn); ok {
				ws = append(ws, watched{c, rec, "proxy"})
			}
			mu.Lock()
			for client, f := range flows {
				if c, ok := f.up.(*vaultudp.Conn); ok {
					ws = append(ws, watched{c, f.rec, "flow of client " + client + ":"})
				}
			}
			mu.Unlock()
			slices.SortFunc(ws, func(a, b watched) int { return strings.Compare(a.label, b.label) })
			return ws
		})
	})
	if ready != nil {
		ready <- down.LocalAddr()
	}
	fmt.Fprintf(pc.log, "proxy listening on %v, to %v\n", down.LocalAddr(), target)
	buf := make([]byte, 65536)
	lastSweep := time.Now()
	for {
		n, client, err := down.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		now := time.Now()
		key := client.String()
		mu.Lock()
		f := flows[key]
		if f == nil {
			up, urec, err := dial()
			if err != nil {
				mu.Unlock()
				fmt.Fprintf(pc.log, "proxy: upstream for %v: %v\n", client, err)
				continue
			}
			f = &flow{up: up, rec: urec}
			flows[key] = f
			wg.Go(func() { back(pc.log, f.up, down, client) })
		}
		f.lastUsed = now
		if now.Sub(lastSweep) > proxyIdle/4 {
			lastSweep = now
			for k, g := range flows {
				if now.Sub(g.lastUsed) > proxyIdle {
					g.up.Close()
					delete(flows, k)
				}
			}
		}
		mu.Unlock()
		if _, err := f.up.WriteTo(buf[:n], target); err != nil {
			if f.rec != nil && !errors.Is(err, vaultudp.ErrPeerRejected) {
				if fl, ok := f.rec.last(pc.to); ok {
					err = fmt.Errorf("%w; %s", err, fl.reason)
				}
			}
			fmt.Fprintf(pc.log, "proxy: to %v: %v\n", target, err)
		}
	}
}

// back copies replies from an upstream socket to its client until the
// upstream is closed.
func back(log io.Writer, up, down net.PacketConn, client net.Addr) {
	buf := make([]byte, 65536)
	for {
		n, _, err := up.ReadFrom(buf)
		if err != nil {
			return
		}
		if _, err := down.WriteTo(buf[:n], client); err != nil {
			fmt.Fprintf(log, "proxy: back to %v: %v\n", client, err)
		}
	}
}
