package main

import (
	"context"
	"crypto/ed25519"
	be "encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
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

// procUsage returns the open file descriptors and resident memory of a
// process, from /proc.
func procUsage(t *testing.T, pid int) (fds int, rssKiB int) {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if m := regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`).FindSubmatch(b); m != nil {
		rssKiB, _ = strconv.Atoi(string(m[1]))
	}
	return len(ents), rssKiB
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

// forge sends a one-byte UDP datagram from src to dst through a raw
// socket (IP_HDRINCL): a source address the sender does not own, as an
// attacker spoofs. The kernel fills in the IP checksum; the UDP checksum
// is 0 (none), which IPv4 allows.
func forge(fd int, src, dst netip.AddrPort) error {
	pkt := make([]byte, 20+8+1)
	pkt[0] = 0x45                                     // IPv4, 5 words of header
	be.BigEndian.PutUint16(pkt[2:], uint16(len(pkt))) // total length
	pkt[8] = 64                                       // TTL
	pkt[9] = syscall.IPPROTO_UDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:], s[:])
	copy(pkt[16:], d[:])
	be.BigEndian.PutUint16(pkt[20:], src.Port())
	be.BigEndian.PutUint16(pkt[22:], dst.Port())
	be.BigEndian.PutUint16(pkt[24:], 8+1)
	pkt[28] = 'x'
	return syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: d, Port: int(dst.Port())})
}

// 1,100 one-byte datagrams from forged sources at the client-side proxy:
// its flows stay at -max-flows (the least recently active evicted, and
// counted), so do its sockets, and a real client is still answered.
func TestProxyForgedSources(t *testing.T) {
	const forged = 1100
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		t.Skipf("no raw socket (the test forges source addresses): %v", err)
	}
	defer syscall.Close(fd)
	dir := t.TempDir()
	env := userEnv(dir)
	remoteKey := vaultudp.GenerateIdentity()
	remote, _ := vaultEcho(t, &vaultudp.Config{Identity: remoteKey})
	to := remote.LocalAddr().(*net.UDPAddr).AddrPort()
	// The default cap; with the race detector a smaller one, since a
	// flow's Conn then costs many times its memory and the collector
	// slows the proxy down until it cannot answer show in time.
	maxFlows := defaultMaxFlows
	if raceBuild {
		maxFlows = 128
	}
	p, entry := startProxy(t, env, "-key", filepath.Join(dir, "client.key"), "-listen", "127.0.0.1:0", "-to", to.String(),
		"-remote-key", vaultudp.EncodePublicKey(remoteKey.Public().(ed25519.PublicKey)), "-max-flows", strconv.Itoa(maxFlows))
	pid := p.cmd.Process.Pid

	app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.WriteToUDPAddrPort([]byte("before"), entry)
	readUntil(t, "app", app, "before")
	fds0, rss0 := procUsage(t, pid)

	start := time.Now()
	for i := range forged {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i / 250), byte(i%250 + 1)}), uint16(20000+i))
		if err := forge(fd, src, entry); err != nil {
			t.Fatalf("forging datagram %d: %v", i, err)
		}
	}
	// Wait until the proxy has seen them all (bounded: waitFor), keeping
	// the peak of its descriptors and memory meanwhile.
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var (
		st            status
		fds1, rss1    int
		lastShowError error
	)
	for {
		if fds, rss := procUsage(t, pid); fds > fds1 || rss > rss1 {
			fds1, rss1 = max(fds, fds1), max(rss, rss1)
		}
		if st, err = tryShowJSON(t, env, pid); err != nil {
			lastShowError = err // busy making flows: ask again
		} else if st.Proxy.Made >= forged+1 && st.Proxy.Open == st.Proxy.Max {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy did not account for %d sources within %v: %+v; %v", forged+1, waitFor, st.Proxy, lastShowError)
		}
		<-tick.C
	}
	if fds, rss := procUsage(t, pid); fds > fds1 || rss > rss1 {
		fds1, rss1 = max(fds, fds1), max(rss, rss1)
	}
	c := st.Proxy
	t.Logf("%d forged sources in %v: flows made %d, open %d (max %d), evicted %d, failed %d, queue drops %d; proxy fds %d -> peak %d, RSS %d -> peak %d KiB; remote: %d peers, %d handshakes",
		forged, time.Since(start).Round(time.Millisecond), c.Made, c.Open, c.Max, c.Evicted, c.Failed, c.QueueFull, fds0, fds1, rss0, rss1,
		remote.Stats().Peers, remote.Stats().Handshakes)
	if c.Open > maxFlows || c.Max != maxFlows {
		t.Errorf("%d flows open, over -max-flows %d", c.Open, maxFlows)
	}
	if want := uint64(forged + 1 - maxFlows); c.Evicted < want {
		t.Errorf("%d flows evicted, want at least %d", c.Evicted, want)
	}
	// A flow holds one socket (and the runtime a few): the descriptors
	// stay near the cap, not near the number of sources.
	if fds1 > fds0+maxFlows+16 {
		t.Errorf("the proxy holds %d descriptors (%d at rest): more than one a flow", fds1, fds0)
	}
	// A real client is still served.
	app2, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer app2.Close()
	app2.WriteToUDPAddrPort([]byte("after"), entry)
	readUntil(t, "a new client after the flood", app2, "after")
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
	_, server := startProxy(t, env, "-key", skey, "-allow", cpub, "-listen", "127.0.0.1:0", "-forward", echo.addr.String())
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
}
