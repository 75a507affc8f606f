//go:build linux

package vaultudp

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Independent review of the issue 21 changes (review branch). Each test
// performs an attack through real sockets on loopback and fails on main
// (126ad41) where it found a hole; it prints its figure either way.

// reviewOpen is an open (plaintext) datagram carrying payload.
func reviewOpen(b []byte) []byte {
	return (&record{payload: b, hasPayload: true}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
}

// reviewHandled is what c has done with the plaintext it received:
// delivered or dropped at the full read queue.
func reviewHandled(c *Conn) uint64 {
	s := c.Stats()
	return s.DatagramsIn + s.Drops.QueueFull
}

// TestReviewEvictedSetOverwritten (finding 1): the fix of issue 21 item 4
// remembers evicted plaintext-only addresses in addrSet, a fixed table of
// 4,096 keyed hashes where a later address takes an earlier one's slot.
// So the attacker of item 4 only has to evict more: after ~20,000 forged
// plaintext sources, almost every victim's slot is taken by a filler,
// the victims are forgotten, and the application's answer makes them
// write-origin peers again, which get a hello and its retries. The
// figure is the victims' amplification, as in item 4 (x70 before).
func TestReviewEvictedSetOverwritten(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	cfg := &Config{Policy: Opportunistic, HandshakeTimeout: 500 * time.Millisecond}
	clk := newFakeClock()
	srv := fakeListen(t, clk, cfg)
	msg := reviewOpen([]byte("twelve bytes"))
	var victims []*victim
	for range 4 {
		v := newVictim(t)
		victims = append(victims, v)
		sp.send(t, v.addr(), addrOf(srv), msg)
	}
	// Fillers, paced so that the socket drops none: each evicts one
	// plaintext peer into the 4,096-slot set once the table is full.
	const fillers = 24000
	const batch = 400
	sent := uint64(len(victims))
	stop := make(chan struct{})
	drained := make(chan struct{})
	go func() { // the application reads everything
		defer close(drained)
		buf := make([]byte, 64)
		for {
			select {
			case <-stop:
				return
			default:
			}
			srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			srv.ReadFromUDPAddrPort(buf)
		}
	}()
	for i := 0; i < fillers; i += batch {
		for j := i; j < i+batch; j++ {
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(j >> 8), byte(j)}), uint16(20000+j%1000))
			sp.send(t, from, addrOf(srv), msg)
		}
		sent += batch
		waitFor(2*time.Second, func() bool { return reviewHandled(srv) >= sent })
	}
	close(stop)
	<-drained
	srv.SetReadDeadline(time.Time{})
	srv.peers.mu.RLock()
	remembered := 0
	for _, v := range victims {
		if srv.peers.plainEvicted.has(v.addr()) {
			remembered++
		}
	}
	srv.peers.mu.RUnlock()
	for _, v := range victims {
		if _, err := srv.WriteToUDPAddrPort([]byte("the answer"), v.addr()); err != nil {
			t.Fatal(err)
		}
	}
	// A hello and its retries (100 ms apart), then all that srv sent has
	// reached the victims.
	clk.advance(t, 3*cfg.HandshakeTimeout/2, 50*time.Millisecond)
	waitQueueIdle(t, srv)
	bad := 0
	for i, v := range victims {
		v.barrier(t)
		n, bytes := v.received()
		t.Logf("victim %d: sent %d bytes, got %d datagrams, %d bytes (x%.1f)", i, len(msg), n, bytes, factor(bytes, len(msg)))
		if n != 1 {
			bad++
		}
	}
	t.Logf("%d forged plaintext sources handled of %d; victims still remembered as evicted: %d of %d", reviewHandled(srv), sent, remembered, len(victims))
	if bad > 0 {
		t.Errorf("%d of %d evicted victims got hellos besides the answer: the evicted-address set forgets them once enough fillers pass", bad, len(victims))
	}
}

// reviewSpoofFlood sends d from from (forged) to to at about rate a
// second until stop is closed, at most for limit.
func reviewSpoofFlood(sp *spoofer, from, to netip.AddrPort, d []byte, rate int, limit time.Duration, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for time.Since(start) < limit {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			due := int64(time.Since(start).Seconds()*float64(rate)) - sent.Load()
			for range min(due, int64(rate/100+1)) {
				sp.sendQuiet(from, to, d)
				sent.Add(1)
			}
		}
	}()
	return &wg
}

// TestReviewCookieBudgetDrainedByForgery (finding 3): the cookie budget
// is per source address and port (sourceBudget), 20 a second. A hello
// forged from a client's own address and port spends that client's
// budget: a few thousand forged hellos a second, which also keep the
// responder under load (over CookieThreshold), and the client's cookieless
// hellos are dropped (Drops.CookieLimit) instead of answered with the
// cookie it needs. Its handshake fails. The control: the same flood
// forged from another port of the client's IP, which the budget tells
// apart. README: "a flood from one socket, even at a client's own IP,
// costs no system calls and starves nobody".
func TestReviewCookieBudgetDrainedByForgery(t *testing.T) {
	t.Skip("finding 3 (MEDIUM, kept: the trade is in cookie.go): hellos forged from a client's address and port drain its cookie budget; its handshake fails")
	sp := newSpoofer(t)
	srv := listenT(t, "udp4", "127.0.0.1:0", nil) // CookieThreshold 500
	const rate = 5000
	const limit = 3 * time.Second
	hello := helloDatagram(t) // signed, no cookie; replayed
	run := func(name string, forged func(client netip.AddrPort) netip.AddrPort) error {
		cl := listenT(t, "udp4", "127.0.0.2:0", &Config{HandshakeTimeout: limit})
		stop := make(chan struct{})
		var sent atomic.Int64
		before := srv.Stats()
		wg := reviewSpoofFlood(sp, forged(addrOf(cl)), addrOf(srv), hello, rate, 2*limit, stop, &sent)
		// Under load before the client starts (not a synchronisation).
		waitFor(waitLong, func() bool { return srv.Stats().Drops.CookieLimit > before.Drops.CookieLimit })
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		start := time.Now()
		err := cl.Handshake(ctx, addrOf(srv))
		took := time.Since(start)
		cancel()
		close(stop)
		wg.Wait()
		st := srv.Stats()
		t.Logf("%s: %d forged hellos at %d/s: the client's handshake: %v after %v; cookies sent %d, cookie limit %d",
			name, sent.Load(), rate, err, took.Round(time.Millisecond),
			st.CookiesSent-before.CookiesSent, st.Drops.CookieLimit-before.Drops.CookieLimit)
		cl.Close()
		time.Sleep(1100 * time.Millisecond) // the load window ends (cookie.go: a second)
		return err
	}
	if err := run("forged from another port of the client's IP", func(a netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(a.Addr(), a.Port()+1)
	}); err != nil {
		t.Fatalf("the control failed: %v", err)
	}
	if err := run("forged from the client's own address and port", func(a netip.AddrPort) netip.AddrPort { return a }); err != nil {
		t.Errorf("a flood forged from a client's address and port starves it of cookies: %v", err)
	}
}

// TestReviewResetsUncappedInTotal (finding 5): the reset budget is per
// source in a table where a new source takes a slot over with a full
// bucket, and there is no longer any cap on the total (reset.go: "the
// total needs no cap for amplification"). So junk from forged random
// sources costs the reader a BLAKE2b and a sendto (a system call, not
// batched) per datagram, where junk from one source costs 20 a second.
// No amplification (24 bytes for 32), but the flood chooses where the
// resets go (any address, any port: reflection at 0.75) and makes the
// reader do a system call for each datagram it reads in a batch of 32.
// The figure: resets sent per junk datagram, and the rate the reader
// keeps up with, from one source and from random ones.
func TestReviewResetsUncappedInTotal(t *testing.T) {
	heavy(t)
	t.Skip("finding 5 (LOW): one reset (a sendto) per junk datagram from random forged sources; the reader keeps up with 62%")
	sp := newSpoofer(t)
	srv := listenT(t, "udp4", "127.0.0.1:0", nil)
	const n = 60000
	run := func(name string, from func(i int) netip.AddrPort) float64 {
		before := srv.Stats()
		start := time.Now()
		for i := range n {
			sp.sendQuiet(from(i), addrOf(srv), junkFor(uint32(i+1)))
		}
		sent := time.Since(start)
		waitFor(5*time.Second, func() bool {
			return srv.Stats().Drops.UnknownSession-before.Drops.UnknownSession >= n*9/10
		})
		st := srv.Stats()
		handled := st.Drops.UnknownSession - before.Drops.UnknownSession
		resets := st.ResetsSent - before.ResetsSent
		t.Logf("%s: %d junk sent in %v (%.0f/s); handled %d (%.0f%%), %d resets sent (%.2f a datagram)",
			name, n, sent.Round(time.Millisecond), n/sent.Seconds(), handled, 100*float64(handled)/n, resets, float64(resets)/float64(max(handled, 1)))
		return float64(resets) / float64(max(handled, 1))
	}
	run("one forged source", func(int) netip.AddrPort { return netip.MustParseAddrPort("127.0.0.9:4000") })
	perJunk := run("random forged sources", func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 2, byte(i >> 8), byte(i)}), uint16(1024+i%60000))
	})
	if perJunk > 0.5 {
		t.Errorf("%.2f resets (system calls) per junk datagram from forged sources: no total cap", perJunk)
	}
}

// reviewSlowRelay forwards between a and b through one socket, each
// datagram delay later: a path with a round trip of 2*delay. a sees the
// relay's address as its peer's.
type reviewSlowRelay struct {
	pc   *net.UDPConn
	a, b netip.AddrPort
}

func newReviewSlowRelay(t *testing.T, a, b netip.AddrPort, delay time.Duration) *reviewSlowRelay {
	r := &reviewSlowRelay{pc: rawUDP(t), a: a, b: b}
	type item struct {
		due time.Time
		to  netip.AddrPort
		d   []byte
	}
	ch := make(chan item, 4096)
	done := make(chan struct{})
	go func() {
		defer close(ch)
		buf := make([]byte, 65536)
		for {
			n, from, err := r.pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			to := r.a
			if normAddr(from) == r.a {
				to = r.b
			}
			select {
			case ch <- item{time.Now().Add(delay), to, bytes.Clone(buf[:n])}:
			default:
			}
		}
	}()
	go func() {
		defer close(done)
		for it := range ch {
			time.Sleep(time.Until(it.due)) // the path's delay
			r.pc.WriteToUDPAddrPort(it.d, it.to)
		}
	}()
	t.Cleanup(func() { r.pc.Close(); <-done })
	return r
}

func (r *reviewSlowRelay) addr() netip.AddrPort {
	return normAddr(r.pc.LocalAddr().(*net.UDPAddr).AddrPort())
}

// TestReviewForgedHellosCancelOwnHandshake (finding 7; found on v3 at
// 126ad41, holds on v4, where a hello makes no session): a configured
// peer without a pinned key (trust on first use) and no session yet. A
// forged hello from its address, signed by the attacker's key, is
// answered, and its responder session, if the attacker's key is larger
// than the Conn's (the crossed-hello tie-break, keypairs.go
// installLocked), ends the Conn's own attempt (clearInitLocked): the real
// peer's reply then finds no hello to complete ("stale"). Each new
// attempt waits out the deferral (awaitingConfirmLocked) and is cancelled
// again by the next forged hello if it lands within a round trip. With a
// 40 ms round trip, 50 forged hellos a second (each signed, fresh) keep
// the Conn from ever reaching its peer. The control: the same forgery
// with a key smaller than the Conn's.
// TestForgedHellosDoNotBlockOwnHandshake covers only a loopback round trip
// and random keys.
func TestReviewForgedHellosCancelOwnHandshake(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	run := func(name string, larger bool) error {
		a := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: 3 * time.Second})
		b := listenT(t, "udp4", "127.0.0.1:0", nil)
		relay := newReviewSlowRelay(t, addrOf(a), addrOf(b), 20*time.Millisecond)
		var id ed25519.PrivateKey
		for { // the attacker picks its key: on the chosen side of a's
			id = GenerateIdentity()
			if (bytes.Compare(a.hs.public, id.Public().(ed25519.PublicKey)) < 0) == larger {
				break
			}
		}
		eph, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		stop, stopped := make(chan struct{}), make(chan struct{})
		var forged atomic.Int32
		go func() {
			defer close(stopped)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for i := range 500 { // 10 s at most
				sp.sendQuiet(relay.addr(), addrOf(a), helloDatagramFrom(id, time.Now(), uint32(i+1), eph))
				forged.Add(1)
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
		defer func() { close(stop); <-stopped }()
		waitFor(waitLong, func() bool { return a.Stats().Verifications > 0 }) // the forgery under way
		before := a.Stats()
		start := time.Now()
		if err := a.AddPeer(PeerConfig{Addr: relay.addr()}); err != nil { // not pinned
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		err = a.Handshake(ctx, relay.addr())
		st := a.Stats()
		t.Logf("%s: a's own handshake through a 40 ms round trip under forged hellos every 20 ms: %v after %v (%d forged; a's stale replies %d, its hellos %d)",
			name, err, time.Since(start).Round(time.Millisecond), forged.Load(), st.Drops.Stale-before.Drops.Stale, a.peerHellos(relay.addr()))
		return err
	}
	if err := run("attacker's key smaller than a's", false); err != nil {
		t.Fatalf("the control failed: %v", err)
	}
	if err := run("attacker's key larger than a's", true); err != nil {
		t.Errorf("forged hellos with a larger key cancel every attempt of a's: %v", err)
	}
}

// peerHellos is how many hellos c sent to addr's peer.
func (c *Conn) peerHellos(addr netip.AddrPort) int {
	p, _ := c.peerFor(addr, lookupOnly)
	if p == nil {
		return -1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hs.hellos
}

// reviewSniffer reads the IPv4 packets that cross the loopback
// interface, as an observer on a client's path reads its traffic.
type reviewSniffer struct{ fd int }

func newReviewSniffer(t *testing.T) *reviewSniffer {
	t.Helper()
	const ethPIP = 0x0800
	proto := uint16(ethPIP>>8 | (ethPIP&0xff)<<8) // network order
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_DGRAM, int(proto))
	if err != nil {
		t.Skipf("no packet socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: proto, Ifindex: lo.Index}); err != nil {
		t.Skip(err)
	}
	tv := syscall.Timeval{Usec: 100000}
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	return &reviewSniffer{fd: fd}
}

// udpFrom returns the payload of the next UDP datagram from src to dst
// that match accepts, within d.
func (s *reviewSniffer) udpFrom(src, dst netip.AddrPort, match func([]byte) bool, d time.Duration) ([]byte, bool) {
	buf := make([]byte, 65536)
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		n, _, err := syscall.Recvfrom(s.fd, buf, 0)
		if err != nil || n < 28 || buf[0]>>4 != 4 || buf[9] != syscall.IPPROTO_UDP {
			continue
		}
		ihl := int(buf[0]&0xf) * 4
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[12:16])), binary.BigEndian.Uint16(buf[ihl:]))
		to := netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[16:20])), binary.BigEndian.Uint16(buf[ihl+2:]))
		if from == src && to == dst && match(buf[ihl+8:n]) {
			return bytes.Clone(buf[ihl+8 : n]), true
		}
	}
	return nil, false
}

// TestReviewSiblingSamePortResetOracle (finding 8): the fleet rule binds a
// token to (index, the client's address, the local port), so two hosts of
// a fleet that share an identity and serve on the same port (what the
// balancer case needs) mint the same token for an index. An attacker who
// reads the client's traffic and can forge sources asks the sibling
// host, at its own address, for a reset of the live session's index with
// junk forged from the client's address; the sibling sends the reset to
// the client (reset.go: "where the attacker does not read it") in clear,
// the attacker reads it there and sends it again from the serving host's
// address: the client drops its session. README, "Conns sharing an
// identity": "so a sibling is no reset oracle".
func TestReviewSiblingSamePortResetOracle(t *testing.T) {
	t.Skip("finding 8 (LOW): a sibling on the same port mints the live token; sniffed and replayed, it resets the client")
	sp := newSpoofer(t)
	sn := newReviewSniffer(t)
	id := GenerateIdentity()
	a := listenT(t, "udp4", "127.0.0.1:0", &Config{Identity: id})
	port := addrOf(a).Port()
	sib, err := Listen("udp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port).String(), &Config{Identity: id})
	if err != nil {
		t.Skipf("no sibling on 127.0.0.2:%d: %v", port, err)
	}
	defer sib.Close()
	cl := listenT(t, "udp4", "127.0.0.1:0", nil)
	if err := cl.AddPeer(PeerConfig{Addr: addrOf(a), PublicKey: id.Public().(ed25519.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	writeUntilRead(t, cl, a, "before")
	if _, err := a.WriteToUDPAddrPort([]byte("ack"), addrOf(cl)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, cl, "ack", addrOf(a))
	idx := sessionOf(t, a, addrOf(cl)).localIndex // on the wire in every datagram cl sends a
	before := cl.Stats()

	sp.send(t, addrOf(cl), addrOf(sib), junkFor(idx))
	reset, ok := sn.udpFrom(addrOf(sib), addrOf(cl), func(d []byte) bool {
		return len(d) == resetLen && d[1] == typeReset && binary.BigEndian.Uint32(d[4:]) == idx
	}, 2*time.Second)
	if !ok {
		t.Fatal("the sibling sent no reset to the client")
	}
	sp.send(t, addrOf(a), addrOf(cl), reset) // as from the serving host
	_, dropped := waitFor(2*time.Second, func() bool { return cl.Stats().ResetsReceived > before.ResetsReceived })
	t.Logf("sibling on the same port: its reset for the live index (sniffed on the client's path, %d bytes) replayed from the serving host: client's session reset: %v", len(reset), dropped)
	if dropped {
		t.Errorf("two datagrams (one forged to the sibling, one replayed) tore down the client's session")
	}
}

// TestReviewResetBudgetDrainedByForgery (finding 10, as finding 3 for
// resets): the reset budget is per source address and port, 20 a second.
// Junk forged from a client's own address and port (a few hundred a
// second) spends it: after the server restarts, the client's sealed
// datagrams get no reset and it is reached again only by its silence
// timer (15 s). The control: the same junk forged from another port.
// Probabilistic: the client still wins a token now and then (1 run in 4
// at 20,000/s, 1 in 3 at 5,000/s here).
func TestReviewResetBudgetDrainedByForgery(t *testing.T) {
	parallel(t)
	t.Skip("finding 10 (LOW): junk forged from a client's address and port starves it of its reset (3 runs in 4)")
	sp := newSpoofer(t)
	run := func(name string, forged func(client netip.AddrPort) netip.AddrPort) bool {
		s1, c, id := pinnedServer(t, nil)
		sAddr := addrOf(s1)
		if _, err := s1.WriteToUDPAddrPort([]byte("ack"), addrOf(c)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, c, "ack", sAddr)
		s1.Close()
		s2 := restartOn(t, sAddr, &Config{Identity: id})
		stop := make(chan struct{})
		var sent atomic.Int64
		wg := reviewSpoofFlood(sp, forged(addrOf(c)), sAddr, junkFor(12345), 20000, 5*time.Second, stop, &sent)
		time.Sleep(100 * time.Millisecond) // the flood under way (not a synchronisation)
		before := c.Stats()
		arrived := false
		buf := make([]byte, 2048)
		start := time.Now()
		for i := 0; i < 3 && !arrived; i++ {
			if _, err := c.WriteToUDPAddrPort([]byte("after"), sAddr); err != nil {
				t.Fatal(err)
			}
			for !arrived {
				s2.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				n, _, err := s2.ReadFromUDPAddrPort(buf)
				if err != nil {
					break
				}
				arrived = string(buf[:n]) == "after"
			}
		}
		close(stop)
		wg.Wait()
		resets := c.Stats().ResetsReceived - before.ResetsReceived
		t.Logf("%s: %d junk at 20,000/s; the client got %d reset(s) in 3 writes, reached again: %v after %v",
			name, sent.Load(), resets, arrived, time.Since(start).Round(time.Millisecond))
		return arrived
	}
	if !run("junk forged from another port", func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr(), a.Port()+1) }) {
		t.Fatal("the control failed")
	}
	if !run("junk forged from the client's address and port", func(a netip.AddrPort) netip.AddrPort { return a }) {
		t.Errorf("junk forged from the client's own address and port starves it of its reset")
	}
}

// TestReviewHeldBytesStarveRoamers (finding 11, LOW; found on v3 at
// 126ad41, holds on v4 at 8403ecf): the Conn-wide bound
// on datagrams held during path validation (4 MiB) is one pool for all
// peers, first come first served: a few sessions of the attacker's own
// (any key is accepted by default) fill it with 60 KB datagrams from
// addresses that never answer, and keep it full by sending again every
// handshake timeout. A legitimate client that roams meanwhile (NAT
// rebinding) has the datagrams it sends before its new address is
// proved dropped instead of held and delivered. The figure: the roaming
// client's first datagram, with the pool empty and with it full.
func TestReviewHeldBytesStarveRoamers(t *testing.T) {
	parallel(t)
	sp := newSpoofer(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{Padding: PadNone, HandshakeTimeout: 2 * time.Second})
	roam := func(name string) bool {
		cl := listenT(t, "udp4", "127.0.0.1:0", nil)
		handshakeT(t, cl, addrOf(s))
		writeUntilRead(t, cl, s, "before")
		if err := cl.Rebind("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		before := s.Stats().Drops.Unvalidated
		if _, err := cl.WriteToUDPAddrPort([]byte("first from the new address"), addrOf(s)); err != nil {
			t.Fatal(err)
		}
		s.SetReadDeadline(time.Now().Add(time.Second))
		defer s.SetReadDeadline(time.Time{})
		buf := make([]byte, 2048)
		got := false
		for !got {
			n, _, err := s.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			got = string(buf[:n]) == "first from the new address"
		}
		held, _ := heldOnPaths(s)
		t.Logf("%s: a client that roamed: its first datagram delivered: %v (held on paths %d KiB, Drops.Unvalidated +%d)",
			name, got, held>>10, s.Stats().Drops.Unvalidated-before)
		return got
	}
	if !roam("pool empty") {
		t.Fatal("the control failed")
	}
	payload := strings.Repeat("x", 60000)
	for i := range 9 { // 9 sessions x 8 datagrams x 64 KiB buffers > 4 MiB
		m := listenT(t, "udp4", "127.0.0.1:0", &Config{Padding: PadNone})
		handshakeT(t, m, addrOf(s))
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 2, byte(1 + i)}), 40000)
		for range maxHeldOnPath {
			sp.send(t, from, addrOf(s), sealedFrom(t, m, addrOf(s), payload))
		}
	}
	strangerBarrier(t, rawUDP(t), addrOf(s))
	if !roam("pool filled by 9 attacker sessions") {
		t.Errorf("a legitimate roaming client's datagram was dropped: the attacker holds the Conn's path pool")
	}
}
