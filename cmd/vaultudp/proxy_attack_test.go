package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

// These tests attack the proxy binary over real sockets on loopback.

var proxyListeningRE = regexp.MustCompile(`^proxy listening on (\S+), to (\S+); trust: (.+)$`)

// startProxy starts 'vaultudp proxy' and returns it and its address.
func startProxy(t *testing.T, env []string, args ...string) (*proc, netip.AddrPort) {
	t.Helper()
	p := startCLI(t, env, append([]string{"proxy"}, args...)...)
	m := p.stderr.wait(t, "proxy", proxyListeningRE)
	return p, netip.MustParseAddrPort(m[1])
}

// echoService is a plain UDP echo service that tells the test whom it
// heard from.
type echoService struct {
	conn  *net.UDPConn
	addr  netip.AddrPort
	froms chan netip.AddrPort
}

func newEchoService(t *testing.T) *echoService {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &echoService{conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), froms: make(chan netip.AddrPort, 4096)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case e.froms <- from:
			default:
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return e
}

// vaultEcho is a vaultudp Conn that echoes what it receives and tells the
// test whom it heard from: a remote proxy's stand-in.
func vaultEcho(t *testing.T, cfg *vaultudp.Config) (*vaultudp.Conn, chan netip.AddrPort) {
	t.Helper()
	c, err := vaultudp.Listen("udp4", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	froms := make(chan netip.AddrPort, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case froms <- from:
			default:
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c, froms
}

// readUntil reads from r until it returns want, failing the test if it
// returns any datagram containing "INJECT" first, or nothing within
// waitFor.
func readUntil(t *testing.T, what string, r interface {
	ReadFrom([]byte) (int, net.Addr, error)
	SetReadDeadline(time.Time) error
}, want string) {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, 65536)
	for range 100 {
		n, _, err := r.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: no %q: %v", what, want, err)
		}
		got := string(buf[:n])
		if strings.Contains(got, "INJECT") {
			t.Fatalf("%s: received a stranger's datagram %q before %q", what, got, want)
		}
		if got == want {
			return
		}
	}
	t.Fatalf("%s: 100 datagrams, none %q", what, want)
}

// Server side: the upstream socket towards the service is connected to
// it, so a stranger who learns its port (here: from the service's view)
// and sends to it reaches nobody; the client gets only the service's
// answers. A key not in -allow cannot use the proxy at all.
func TestProxyServerSideInjection(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	echo := newEchoService(t)
	ckey, cpub := keygen(t, env, dir, "client.key")
	skey, spub := keygen(t, env, dir, "server.key")
	_, server := startProxy(t, env, "-key", skey, "-allow", cpub, "-listen", "127.0.0.1:0", "-forward", echo.addr.String())

	id, err := vaultudp.LoadPrivateKey(ckey)
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := vaultudp.ParsePublicKey(spub)
	client, err := vaultudp.Listen("udp4", "127.0.0.1:0", &vaultudp.Config{Identity: id, Peers: []vaultudp.PeerConfig{{Addr: server, PublicKey: pin}}})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.WriteToUDPAddrPort([]byte("ping 1"), server); err != nil {
		t.Fatal(err)
	}
	readUntil(t, "client", client, "ping 1")
	upstream := <-echo.froms // the proxy's socket towards the service

	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	for range 3 {
		if _, err := stranger.WriteToUDPAddrPort([]byte("INJECTED as the service"), upstream); err != nil {
			t.Fatal(err)
		}
	}
	// Sent after the injection, so answered after it, were it relayed.
	if _, err := client.WriteToUDPAddrPort([]byte("ping 2"), server); err != nil {
		t.Fatal(err)
	}
	readUntil(t, "client after the injection", client, "ping 2")

	// A key not allowed cannot send through it.
	other, err := vaultudp.Listen("udp4", "127.0.0.1:0", &vaultudp.Config{HandshakeTimeout: time.Second, Peers: []vaultudp.PeerConfig{{Addr: server, PublicKey: pin}}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := other.Handshake(ctx, server); err == nil {
		t.Errorf("a key not in -allow completed a handshake with the proxy")
	}
}

// Client side: each flow's Conn accepts only the remote proxy, pinned
// (-remote-key) or known (known hosts). A stranger who learns a flow's
// port (here: from the remote's view) and handshakes with it is refused;
// the plain client gets only the remote's answers.
func TestProxyClientSideInjection(t *testing.T) {
	for _, mode := range []string{"pinned", "known hosts"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			env := userEnv(dir)
			remoteKey := vaultudp.GenerateIdentity()
			remote, froms := vaultEcho(t, &vaultudp.Config{Identity: remoteKey})
			to := remote.LocalAddr().(*net.UDPAddr).AddrPort()
			args := []string{"-key", filepath.Join(dir, "client.key"), "-listen", "127.0.0.1:0", "-to", to.String()}
			if mode == "pinned" {
				args = append(args, "-remote-key", vaultudp.EncodePublicKey(remoteKey.Public().(ed25519.PublicKey)))
			}
			p, entry := startProxy(t, env, args...)
			app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()
			if _, err := app.WriteToUDPAddrPort([]byte("ping 1"), entry); err != nil {
				t.Fatal(err)
			}
			readUntil(t, "app", app, "ping 1")
			flowAddr := <-froms // the client proxy's flow socket
			if mode == "known hosts" {
				p.stderr.wait(t, "first contact", regexp.MustCompile(`^new server `+regexp.QuoteMeta(to.String())+`, key `))
			}

			stranger, err := vaultudp.Listen("udp4", "127.0.0.1:0", &vaultudp.Config{HandshakeTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer stranger.Close()
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := stranger.Handshake(ctx, flowAddr); err == nil {
				t.Errorf("a stranger completed a handshake with the flow at %v", flowAddr)
			}
			for range 3 {
				stranger.WriteToUDPAddrPort([]byte("INJECTED as the remote"), flowAddr)
			}
			if _, err := app.WriteToUDPAddrPort([]byte("ping 2"), entry); err != nil {
				t.Fatal(err)
			}
			readUntil(t, "app after the injection", app, "ping 2")
		})
	}
}

// showJSON asks a running command for its status.
func showJSON(t *testing.T, env []string, pid int) status {
	t.Helper()
	st, err := tryShowJSON(t, env, pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func tryShowJSON(t *testing.T, env []string, pid int) (status, error) {
	t.Helper()
	r := runCLI(t, env, "", "show", "-json")
	var all []status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		return status{}, fmt.Errorf("show -json: %v: %s %s", err, r.stdout, r.stderr)
	}
	for _, st := range all {
		if st.PID == pid {
			return st, nil
		}
	}
	return status{}, fmt.Errorf("show -json has no pid %d: %s %s", pid, r.stdout, r.stderr)
}

// 300 new clients at once through both proxies to a plain echo service:
// every one is answered, since flows are made off the read loop.
func TestProxyBurst300(t *testing.T) {
	const clients = 300
	dir := t.TempDir()
	env := userEnv(dir)
	echo := newEchoService(t)
	ckey, cpub := keygen(t, env, dir, "client.key")
	skey, spub := keygen(t, env, dir, "server.key")
	sp, server := startProxy(t, env, "-key", skey, "-allow", cpub, "-listen", "127.0.0.1:0", "-forward", echo.addr.String())
	cp, entry := startProxy(t, env, "-key", ckey, "-listen", "127.0.0.1:0", "-to", server.String(), "-remote-key", spub)

	socks := make([]*net.UDPConn, clients)
	for i := range socks {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socks[i] = c
	}
	start := time.Now()
	for i, c := range socks {
		if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("client %d", i)), entry); err != nil {
			t.Fatal(err)
		}
	}
	type answer struct {
		i   int
		err error
	}
	answers := make(chan answer, clients)
	for i, c := range socks {
		go func() {
			c.SetReadDeadline(time.Now().Add(waitFor))
			buf := make([]byte, 64)
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err == nil && string(buf[:n]) != fmt.Sprintf("client %d", i) {
				err = fmt.Errorf("answered %q", buf[:n])
			}
			answers <- answer{i, err}
		}()
	}
	answered := 0
	var last time.Duration
	for range clients {
		a := <-answers
		if a.err != nil {
			t.Errorf("client %d: %v", a.i, a.err)
			continue
		}
		answered++
		last = time.Since(start)
	}
	st := showJSON(t, env, cp.cmd.Process.Pid)
	t.Logf("%d of %d new clients answered, the last after %v; client proxy: %d flows made, %d queue drops, %d failed",
		answered, clients, last.Round(time.Millisecond), st.Proxy.Made, st.Proxy.QueueFull, st.Proxy.Failed)
	if answered < clients {
		// Where the missing datagrams went: each side's counters, summed
		// over its Conns (the client proxy has one per flow).
		for _, side := range []struct {
			name string
			p    *proc
		}{{"client proxy", cp}, {"server proxy", sp}} {
			var sum vaultudp.Stats
			for _, c := range showJSON(t, env, side.p.cmd.Process.Pid).Conns {
				s := c.Stats
				sum.Handshakes += s.Handshakes
				sum.HandshakeFailures += s.HandshakeFailures
				sum.ResetsSent += s.ResetsSent
				sum.ResetsReceived += s.ResetsReceived
				sum.Resent += s.Resent
				sum.Drops.Auth += s.Drops.Auth
				sum.Drops.UnknownSession += s.Drops.UnknownSession
				sum.Drops.HandshakeTimeout += s.Drops.HandshakeTimeout
				sum.Drops.HandshakeQueueFull += s.Drops.HandshakeQueueFull
				sum.Drops.QueueFull += s.Drops.QueueFull
				sum.Drops.Stale += s.Drops.Stale
				sum.Drops.Replay += s.Drops.Replay
			}
			t.Logf("%s: handshakes %d, failures %d, resets sent %d, received %d, resent %d; drops %+v",
				side.name, sum.Handshakes, sum.HandshakeFailures, sum.ResetsSent, sum.ResetsReceived, sum.Resent, sum.Drops)
		}
	}
}

// A flow without traffic for -flow-idle is closed and counted; the client
// gets a new one when it speaks again.
func TestProxyFlowIdle(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	echo := newEchoService(t)
	p, entry := startProxy(t, env, "-allow-any", "-flow-idle", "300ms", "-listen", "127.0.0.1:0", "-forward", echo.addr.String())
	client, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.WriteToUDPAddrPort([]byte("one"), entry)
	readUntil(t, "client", client, "one")
	// Bounded wait for the sweep (every idle/4) to close the flow.
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var st status
	for {
		st = showJSON(t, env, p.cmd.Process.Pid)
		if st.Proxy.Expired == 1 || time.Now().After(deadline) {
			break
		}
		<-tick.C
	}
	if st.Proxy.Expired != 1 || st.Proxy.Open != 0 || st.Proxy.Idle != "300ms" {
		t.Fatalf("after -flow-idle 300ms: %+v; want one flow expired, none open", st.Proxy)
	}
	client.WriteToUDPAddrPort([]byte("two"), entry)
	readUntil(t, "client after its flow expired", client, "two")
	if st = showJSON(t, env, p.cmd.Process.Pid); st.Proxy.Made != 2 {
		t.Errorf("flows made %d, want 2 (a new one after expiry)", st.Proxy.Made)
	}
}

// proxy -to remembers the remote's key in the known hosts file; when
// another key answers at that address, its flows refuse it, the client
// gets nothing, and the proxy says which line of which file to remove.
func TestProxyKnownHostsChanged(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	known := filepath.Join(dir, "config", "vaultudp", "known_hosts")
	first, _ := vaultEcho(t, nil)
	to := first.LocalAddr().(*net.UDPAddr).AddrPort()
	p, entry := startProxy(t, env, "-key", filepath.Join(dir, "client.key"), "-listen", "127.0.0.1:0", "-to", to.String())
	app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.WriteToUDPAddrPort([]byte("hello"), entry)
	readUntil(t, "app", app, "hello")
	p.stop()
	first.Close()

	impostor, err := vaultudp.Listen("udp4", to.String(), nil)
	if err != nil {
		t.Skipf("could not take the remote's port again: %v", err)
	}
	defer impostor.Close()
	p2, entry2 := startProxy(t, env, "-key", filepath.Join(dir, "client.key"), "-listen", "127.0.0.1:0", "-to", to.String())
	m := p2.stderr.wait(t, "trust line", proxyListeningRE)
	if !strings.Contains(m[3], "known ("+known+":1)") {
		t.Errorf("the restarted proxy's trust line does not name the known key: %s", m[3])
	}
	app.WriteToUDPAddrPort([]byte("secret"), entry2)
	p2.stderr.wait(t, "the refusal", regexp.MustCompile(`^refused `+regexp.QuoteMeta(to.String())+`: the key of .* has changed: it presented `+regexp.QuoteMeta(vaultudp.EncodePublicKey(impostor.PublicKey()))+`.*remove line 1 of `+regexp.QuoteMeta(known)))
	impostor.SetReadDeadline(time.Now().Add(time.Second))
	if n, _, err := impostor.ReadFrom(make([]byte, 64)); err == nil {
		t.Errorf("the impostor received %d bytes", n)
	}
}
