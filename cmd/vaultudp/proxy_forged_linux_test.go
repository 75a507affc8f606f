//go:build linux

package main

import (
	"crypto/ed25519"
	be "encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

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
