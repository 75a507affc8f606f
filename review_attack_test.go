package vaultudp

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
	v2 "github.com/vaultudp/vaultudp/internal/v2"
)

// Independent review of the issue 21 changes; see also
// review_attack_linux_test.go.

// reviewFlood sends d to to from pc at about rate datagrams a second
// (bursts every millisecond) until stop is closed, at most for limit.
func reviewFlood(pc *net.UDPConn, to netip.AddrPort, d func() []byte, rate int, limit time.Duration, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		end := time.Now().Add(limit)
		start := time.Now()
		for time.Now().Before(end) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			due := int64(time.Since(start).Seconds()*float64(rate)) - sent.Load()
			for range min(due, int64(rate/100+1)) {
				pc.WriteToUDPAddrPort(d(), to)
				sent.Add(1)
			}
		}
	}()
	return &wg
}

// reviewHandshakeTime is how long a new native client on 127.0.0.2 takes
// to handshake with c (within limit), and its error.
func reviewHandshakeTime(t *testing.T, c *Conn, limit time.Duration) (time.Duration, error) {
	t.Helper()
	cl := listenT(t, "udp4", "127.0.0.2:0", &Config{HandshakeTimeout: limit})
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	err := cl.Handshake(ctx, addrOf(c))
	took := time.Since(start)
	cl.Close()
	return took, err
}

// TestReviewV2KeyExchangesCrowdOutHellos (finding 2): issue 21 item 7 put
// protocol v2 plaintext key exchanges on the Conn's handshake queue, the
// one native hellos and replies use. But they come in before any cookie
// check, and do not count towards the cookie threshold: anyone who can
// forge the source IP of one configured v2 peer (any port) fills the
// 256-slot queue with key exchanges signed by its own key (a signature
// check each on the one handshake goroutine), and native hellos, of new
// clients, rekeys and replies alike, find it full and are dropped
// (Drops.HandshakeQueueFull). The figure: a new native client's handshake
// time under the same datagram rate of v2 junk (the control: the reader
// drops it) and of v2 key exchanges.
func TestReviewV2KeyExchangesCrowdOutHellos(t *testing.T) {
	heavy(t)
	ref := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: ref.addr()})
	keyed(t, c, ref)
	att := rawUDP(t) // on 127.0.0.1: the v2 peer's IP

	var ak [32]byte
	rand.Read(ak[:])
	attacker := v2.NewKeys(&ak, GenerateIdentity())
	kx := v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, attacker.KeyExchange(ref.port())), nil)
	junk := make([]byte, 200)
	rand.Read(junk)
	junk[0] = 0x42 // neither native nor a frame: the reader drops it

	const rate = 50000
	const limit = 5 * time.Second
	run := func(name string, d []byte) (time.Duration, error) {
		stop := make(chan struct{})
		var sent atomic.Int64
		before := c.Stats()
		wg := reviewFlood(att, addrOf(c), func() []byte { return d }, rate, 4*limit, stop, &sent)
		time.Sleep(200 * time.Millisecond) // the flood under way (not a synchronisation)
		var took time.Duration
		var err error
		for i := range 5 { // five new clients in a row: the slowest counts
			d, e := reviewHandshakeTime(t, c, limit)
			t.Logf("%s: client %d: %v after %v", name, i, e, d.Round(time.Millisecond))
			if e != nil || d > took {
				took = d
			}
			if e != nil {
				err = e
			}
		}
		close(stop)
		wg.Wait()
		st := c.Stats()
		t.Logf("%s flood at %d/s (%d sent): five new native clients, the slowest: %v after %v; handshake queue full %d, rejected %d",
			name, rate, sent.Load(), err, took.Round(time.Millisecond),
			st.Drops.HandshakeQueueFull-before.Drops.HandshakeQueueFull, st.Drops.Rejected-before.Drops.Rejected)
		waitFor(waitLong, func() bool { return c.hsQueued.Load() == 0 })
		return took, err
	}
	if _, err := run("v2 junk", junk); err != nil {
		t.Fatalf("the control failed: %v", err)
	}
	// The claim is that they complete (before the fix: the slowest timed
	// out at 5 s); how fast is printed, not asserted (a few ms to a few
	// hundred on a loaded 2-core host).
	took, err := run("v2 key exchange", kx)
	if err != nil {
		t.Errorf("forged v2 key exchanges from a v2 peer's IP keep native handshakes out: %v after %v", err, took.Round(time.Millisecond))
	}
}

// reviewCookie sends hello from pc to c until a cookie message comes
// back (c under load), and returns the cookie.
func reviewCookie(t *testing.T, pc *net.UDPConn, to netip.AddrPort, hello []byte) []byte {
	t.Helper()
	buf := make([]byte, 4096)
	for range 20 {
		for range 600 { // over the threshold: the Conn is under load
			pc.WriteToUDPAddrPort(hello, to)
		}
		pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			n, _, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if _, cookie, err := noise.ParseCookie(buf[:n]); err == nil {
				pc.SetReadDeadline(time.Time{})
				return bytes.Clone(cookie)
			}
		}
	}
	t.Fatal("no cookie")
	return nil
}

// TestReviewCookieHolderFloodsHandshakes (finding 6): the cookie proves a
// source receives; it does not limit it. A cookie is valid for its source
// for two to four minutes, is not signed (it is appended to a hello), and
// a hello that carries a valid one goes onto the handshake queue with no
// budget of any kind. So one attacker socket that answers its own cookie
// once sends the responder signed hellos (one key, rising timestamps:
// each verified, answered, a session installed: the most expensive path,
// 0.25 ms of a core each) faster than the one handshake goroutine can
// take them, and new clients' hellos (with their cookies) find the queue
// full. WireGuard limits initiations with a valid cookie per source IP
// (20/s, device/receive.go ratelimiter). The figure: five new clients'
// handshake times under the flood from one socket.
//
// Fixed twice over: a source has one hello queued at most, a later one
// takes its place (handshake_workers.go), and such hellos have a budget per
// source (cookie.go, holderRate). The test checks that the attacker's
// hellos verified are those before the responder was under load
// (CookieThreshold) and within the budget, and that every new client
// completes; it prints their times.
func TestReviewCookieHolderFloodsHandshakes(t *testing.T) {
	if raceEnabled {
		t.Skip("rates under -race say nothing: the reader, not the queue, is what a flood of 30,000/s meets there")
	}
	srv := listenT(t, "udp4", "127.0.0.1:0", nil)
	att, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer att.Close()
	cookie := reviewCookie(t, att, addrOf(srv), helloDatagram(t))
	// Hellos with the cookie appended, made in advance on every core as
	// an attacker would: 4,096 distinct ones, repeated (a responder
	// cannot tell a repeated v4 hello from a fresh one: each costs it a
	// reply's key exchange).
	const n = 150000
	const distinct = 4096
	made := make([][]byte, distinct)
	var wg sync.WaitGroup
	for w := range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := GenerateIdentity()
			for i := w; i < distinct; i += runtime.GOMAXPROCS(0) {
				init := helloInitFrom(id, uint32(i+1))
				init.SetCookie(cookie)
				made[i] = bytes.Clone(init.Hello())
			}
		}()
	}
	wg.Wait()
	hellos := make([][]byte, n)
	for i := range hellos {
		hellos[i] = made[i%distinct]
	}
	// Its replies come back to the attacker's socket: read and dropped.
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := att.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
		}
	}()
	const rate = 30000
	stop := make(chan struct{})
	var sent atomic.Int64
	before := srv.Stats()
	start := time.Now()
	fl := reviewFlood(att, addrOf(srv), func() []byte { return hellos[min(sent.Load(), n-1)] }, rate, 8*time.Second, stop, &sent)
	time.Sleep(100 * time.Millisecond) // the flood under way (not a synchronisation)
	var worst time.Duration
	failed := 0
	for i := range 5 {
		d, err := reviewHandshakeTime(t, srv, 2*time.Second)
		t.Logf("client %d: %v after %v", i, err, d.Round(time.Millisecond))
		worst = max(worst, d)
		if err != nil {
			failed++
		}
		if sent.Load() >= n {
			break
		}
	}
	close(stop)
	fl.Wait()
	elapsed := time.Since(start)
	st := srv.Stats()
	t.Logf("one socket with one cookie, %d hellos at %d/s: %d verified, %d handshakes, handshake queue full %d, cookie limit %d; new clients: %d of 5 failed, the slowest %v",
		sent.Load(), rate, st.Verifications-before.Verifications, st.Handshakes-before.Handshakes,
		st.Drops.HandshakeQueueFull-before.Drops.HandshakeQueueFull, st.Drops.CookieLimit-before.Drops.CookieLimit, failed, worst.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("one socket holding one cookie keeps new clients out: %d failed, the slowest %v", failed, worst.Round(time.Millisecond))
	}
	// The attacker's hellos that cost a key exchange: those before the
	// load began, and the budget's; the clients' few on top.
	bound := uint64(DefaultCookieThreshold + holderBurst + holderRate*(int(elapsed.Seconds())+1) + 5*5)
	if v := st.Verifications - before.Verifications; v > bound {
		t.Errorf("%d hellos verified in %v; want at most %d (the threshold, then the holder budget)", v, elapsed.Round(time.Millisecond), bound)
	}
}

// TestReviewListenerQueuesPerPeer (finding 9): a Conn's ReadFrom queue
// holds at most ReadQueue datagrams (1,024) for all peers. The Listener
// (new) gives every peer that sends a net.Conn of its own (ConnTo), and
// each has a queue of ReadQueue packets, a receive buffer each (1,473
// bytes at a 1,500 MTU; 64 KiB on loopback): a server that handles one
// connection at a time, or reads slowly, holds ReadQueue buffers for
// every peer that sent, up to MaxPeers (10,000). Peers are as cheap as a
// key (any key is accepted by default). The figure: the heap held by 32
// peers that sent 1,024 small datagrams each to a Listener whose
// application accepts but has not read yet, against a Conn read by
// ReadFrom.
func TestReviewListenerQueuesPerPeer(t *testing.T) {
	// Not parallel: its heap must be its own to the MiB (run first, as the
	// allocation counts are).
	const peers, each = 32, 1024
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // the pools' victim caches too (a test before may have filled them)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	run := func(name string, listener bool) uint64 {
		srv := listenT(t, "udp4", "127.0.0.1:0", &Config{MTU: 1500})
		var accepted []net.Conn
		var mu sync.Mutex
		done := make(chan struct{})
		if listener {
			l := NewListener(srv)
			go func() {
				defer close(done)
				for {
					c, err := l.Accept() // accepted, not read yet (a busy one-at-a-time server)
					if err != nil {
						return
					}
					mu.Lock()
					accepted = append(accepted, c)
					mu.Unlock()
				}
			}()
		} else {
			close(done)
		}
		var clients []*Conn
		for range peers {
			cl := listenT(t, "udp4", "127.0.0.1:0", nil)
			handshakeT(t, cl, addrOf(srv))
			clients = append(clients, cl)
		}
		h0 := heap()
		payload := make([]byte, 64)
		for _, cl := range clients {
			for i := range each {
				cl.WriteToUDPAddrPort(payload, addrOf(srv))
				if i%64 == 63 {
					time.Sleep(time.Millisecond) // paced: the socket drops nothing
				}
			}
		}
		waitFor(5*time.Second, func() bool {
			s := srv.Stats()
			return s.DatagramsIn+s.Drops.QueueFull >= peers*each*95/100
		})
		h1 := heap()
		st := srv.Stats()
		mu.Lock()
		n := len(accepted)
		mu.Unlock()
		t.Logf("%s: %d peers sent %d datagrams of %d bytes each: %d queued, %d dropped (queue full), %d net.Conns accepted; heap +%.1f MiB",
			name, peers, each, len(payload), st.DatagramsIn, st.Drops.QueueFull, n, float64(int64(h1)-int64(h0))/(1<<20))
		srv.Close()
		<-done
		return h1 - min(h0, h1)
	}
	plain := run("ReadFrom, not read yet", false)
	lis := run("Listener, accepted, not read yet", true)
	if lis > 4*max(plain, 1<<20) {
		t.Errorf("the Listener holds %.1f MiB for %d peers, the Conn's read queue %.1f MiB", float64(lis)/(1<<20), peers, float64(plain)/(1<<20))
	}
}
