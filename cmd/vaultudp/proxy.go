package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
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
}

func runProxy(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("proxy", "-listen ADDR (-to REMOTE | -forward SERVICE) [flags]", stderr)
	listen := fs.String("listen", "", "address to listen on (plain UDP with -to, vaultudp with -forward)")
	to := fs.String("to", "", "client side: the remote 'vaultudp proxy -forward' to send sealed datagrams to")
	forward := fs.String("forward", "", "server side: the plain UDP service to deliver opened datagrams to")
	pf := addPeerFlags(fs, "")
	remoteKey := fs.String("remote-key", "", "with -to: pin the remote proxy's public key")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *listen == "" || (*to == "") == (*forward == "") || fs.NArg() != 0 {
		return fmt.Errorf("%w: give -listen and exactly one of -to or -forward", errUsage)
	}
	base, err := pf.config()
	if err != nil {
		return err
	}
	pc := proxyConfig{listen: *listen, log: stderr}
	if *to != "" {
		if pc.to, err = netip.ParseAddrPort(*to); err != nil {
			return fmt.Errorf("%w: -to %q: want IP:PORT", errUsage, *to)
		}
		if *remoteKey != "" {
			k, err := vaultudp.ParsePublicKey(*remoteKey)
			if err != nil {
				return err
			}
			base.Peers = append(base.Peers, vaultudp.PeerConfig{Addr: pc.to, PublicKey: k})
		}
	} else if pc.forward, err = netip.ParseAddrPort(*forward); err != nil {
		return fmt.Errorf("%w: -forward %q: want IP:PORT", errUsage, *forward)
	}
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

// flow is one client's path through the proxy: its own upstream socket, so
// that replies find their way back to it.
type flow struct {
	up       net.PacketConn // sealed (client side) or plain (server side)
	lastUsed time.Time
}

// proxyClientSide: plain datagrams in on listen, sealed out to pc.to from
// one vaultudp Conn per client address; replies go back in clear.
func proxyClientSide(ctx context.Context, pc proxyConfig, ready chan<- net.Addr) error {
	down, err := net.ListenPacket("udp", pc.listen)
	if err != nil {
		return err
	}
	return relay(ctx, pc, down, ready, func() (net.PacketConn, error) {
		c, err := vaultudp.Listen("udp", ":0", pc.vault())
		if err != nil {
			return nil, err
		}
		return c, nil
	}, net.UDPAddrFromAddrPort(pc.to))
}

// proxyServerSide: sealed datagrams in on a vaultudp Conn, plain out to
// pc.forward from one UDP socket per peer; replies go back sealed.
func proxyServerSide(ctx context.Context, pc proxyConfig, ready chan<- net.Addr) error {
	down, err := vaultudp.Listen("udp", pc.listen, pc.vault())
	if err != nil {
		return err
	}
	fmt.Fprintf(pc.log, "proxy identity %s\n", vaultudp.EncodePublicKey(down.PublicKey()))
	return relay(ctx, pc, down, ready, func() (net.PacketConn, error) {
		return net.ListenPacket("udp", ":0")
	}, net.UDPAddrFromAddrPort(pc.forward))
}

// relay copies datagrams from down to target through a per-client
// upstream socket, and each upstream's replies back to its client.
func relay(ctx context.Context, pc proxyConfig, down net.PacketConn, ready chan<- net.Addr, dial func() (net.PacketConn, error), target net.Addr) error {
	var (
		mu    sync.Mutex
		flows = map[string]*flow{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() { down.Close() })
	defer stop()
	defer func() {
		down.Close()
		mu.Lock()
		for _, f := range flows {
			f.up.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
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
			up, err := dial()
			if err != nil {
				mu.Unlock()
				fmt.Fprintf(pc.log, "proxy: upstream for %v: %v\n", client, err)
				continue
			}
			f = &flow{up: up}
			flows[key] = f
			wg.Add(1)
			go func() {
				defer wg.Done()
				back(pc.log, f.up, down, client)
			}()
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
