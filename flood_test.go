package vaultudp

import (
	"bufio"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"

	"golang.org/x/net/ipv4"
)

// Flood tests: a Conn (b) talks to a legitimate peer (a) while an attacker
// floods it with garbage, with correctly signed hellos from fresh
// identities (from one socket on loopback, and from many forged source
// addresses in memory), or with replays of captured traffic. In each:
//
//   - the traffic between a and b goes on: every datagram delivered is
//     checked (traffic), and the datagrams lost are counted and reported;
//   - b's heap stays bounded: sampled during the flood (heapSampler), its
//     peak above the live heap before the flood is reported and asserted
//     generously;
//   - signature verifications stay bounded by the cookie mechanism;
//   - no per-source state grows without limit: learned peers (and with
//     them rate-limit buckets and sessions) are capped by MaxPeers and
//     evicted when idle, remembered hello timestamps are forgotten after
//     the freshness window, pending initiations end with their timeout.
//
// The floods on loopback are paced to what b drains (at most floodWindow
// datagrams ahead of b's counters), so that the kernel's socket buffer
// never overflows: that loss, which no library can prevent, would
// otherwise hit the legitimate traffic too and hide what is measured here.
// The kernel's own count of UDP receive-buffer drops is reported beside.
//
// Counts: 1,000,000 garbage datagrams, 100,000 hellos, 200,000 replays
// (100,000, 5,000 and 20,000 under -race).

const floodWindow = 512

// floodHeapBound bounds the heap growth during a flood: generous, an
// order of magnitude above what is measured, but far below what unbounded
// per-datagram or per-source state would take.
const floodHeapBound = 64 << 20

// legitPair starts test traffic both ways between a and b.
func legitPair(t testing.TB, a, b *Conn, aAddr, bAddr netip.AddrPort, rate int) *traffic {
	tr := newTraffic(t, rate, 1000)
	na, nb := tr.node(1, a), tr.node(2, b)
	tr.flow(na, nb, bAddr, aAddr)
	tr.flow(nb, na, aAddr, bAddr)
	tr.start()
	return tr
}

// reportLegit finishes the legitimate traffic, fails on any wrong
// delivery, and returns the datagrams written and lost.
func reportLegit(t *testing.T, tr *traffic) (written, lost int64) {
	t.Helper()
	tr.finish(300*time.Millisecond, waitLong)
	tr.check()
	written, delivered, failed := tr.totals(nil)
	if failed > 0 {
		t.Logf("legit writes refused: %d (%s)", failed, tr.writeErrors())
	}
	return written, written - delivered
}

// dropSum is every drop counter of s: what a Conn did with the datagrams
// it did not deliver.
func dropSum(s Stats) uint64 {
	d := s.Drops
	return d.Malformed + d.Replay + d.Auth + d.Policy + d.Rejected + d.Stale + d.RateLimit +
		d.QueueFull + d.TooLarge + d.UnknownSession + d.PeerLimit + d.CookieLimit + d.HelloReplaced
}

// handledBy counts what b has done with flood datagrams: dropped, or
// answered with a cookie, or verified.
func handledBy(b *Conn) func() uint64 {
	return func() uint64 {
		s := b.Stats()
		return dropSum(s) + s.CookiesSent + s.Verifications
	}
}

// udpRcvbufErrors returns the kernel's count of UDP datagrams dropped for
// a full receive buffer (all sockets), or -1 if it cannot be read.
func udpRcvbufErrors() int64 {
	f, err := os.Open("/proc/net/snmp")
	if err != nil {
		return -1
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(fields) {
				v, err := strconv.ParseInt(fields[i], 10, 64)
				if err != nil {
					return -1
				}
				return v
			}
		}
	}
	return -1
}

// flooder sends datagrams from one socket with sendmmsg, paced to what
// the target has handled.
type flooder struct {
	pc      *ipv4.PacketConn
	to      *net.UDPAddr
	handled func() uint64
	base    uint64
	window  int // datagrams sent that the target may not have handled yet
	sent    int
	stalls  int // times the target fell window behind for 50 ms
}

func newFlooder(pc *net.UDPConn, to netip.AddrPort, handled func() uint64) *flooder {
	return &flooder{pc: ipv4.NewPacketConn(pc), to: net.UDPAddrFromAddrPort(to), handled: handled, base: handled(), window: floodWindow}
}

// send sends n datagrams made by next.
func (f *flooder) send(t testing.TB, n int, next func(i int) []byte) {
	t.Helper()
	const batch = 64
	ms := make([]ipv4.Message, batch)
	for i := range ms {
		ms[i].Buffers = make([][]byte, 1)
		ms[i].Addr = f.to
	}
	for i := 0; i < n; {
		f.pace()
		k := min(batch, n-i)
		for j := range k {
			ms[j].Buffers[0] = next(i + j)
		}
		for done := 0; done < k; {
			m, err := f.pc.WriteBatch(ms[done:k], 0)
			if err != nil {
				t.Fatalf("flood: %v", err)
			}
			done += m
		}
		i += k
		f.sent += k
	}
}

func (f *flooder) pace() {
	var stuck time.Time
	for f.sent-int(f.handled()-f.base) > f.window {
		if stuck.IsZero() {
			stuck = time.Now()
		} else if time.Since(stuck) > 50*time.Millisecond {
			f.stalls++
			return
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// loopbackPair returns two Conns on 127.0.0.1 with sessions both ways and
// large socket buffers.
func loopbackPair(t *testing.T, ca, cb *Config) (a, b *Conn) {
	a, b = pair(t, "udp4", "127.0.0.1", ca, cb)
	for _, c := range []*Conn{a, b} {
		c.SetReadBuffer(4 << 20)
		c.SetWriteBuffer(4 << 20)
	}
	handshakeT(t, a, addrOf(b))
	handshakeT(t, b, addrOf(a))
	return a, b
}

// TestFloodGarbage: garbage at b while a and b talk: random bytes, sealed
// headers with random session indexes, sealed datagrams forged under the
// live session's index (each costs b an AEAD open), and open envelopes of
// random bytes or with malformed handshake messages.
func TestFloodGarbage(t *testing.T) {
	alone(t)
	n := scaled(1_000_000, 100_000)
	cfg := &Config{MTU: 1500}
	a, b := loopbackPair(t, cfg, cfg)
	live := sessionOf(t, b, addrOf(a)).localIndex

	// A ring of garbage, reused: what matters is what b must do with it.
	rng := mrand.New(mrand.NewPCG(1, 2))
	ring := make([][]byte, 4096)
	for i := range ring {
		d := make([]byte, 1+rng.IntN(1400))
		for j := range d {
			d[j] = byte(rng.Uint32())
		}
		switch i % 5 {
		case 1, 2: // sealed header: an unknown index, or the live one
			d = append(d, make([]byte, 64)...)
			d[0], d[1], d[2], d[3] = ProtocolVersion, typeSealed, 0, 0
			if i%5 == 2 {
				binary.BigEndian.PutUint32(d[4:], live)
			}
		case 3: // an open envelope of random bytes
			d[0] = ProtocolVersion
			if len(d) > 1 {
				d[1] = typeOpen
			}
		case 4: // an open envelope with a handshake message of random bytes
			ctl := d[:min(len(d), 160)]
			ctl[0] = byte(1 + i%3) // hello, reply, cookie
			d = (&record{control: ctl}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
		}
		ring[i] = d
	}

	tr := legitPair(t, a, b, addrOf(a), addrOf(b), scaled(2000, 500))
	kernel0 := udpRcvbufErrors()
	before := b.Stats()
	f := newFlooder(rawUDP(t), addrOf(b), handledBy(b))
	h := startHeapSampler(10 * time.Millisecond)
	start := time.Now()
	f.send(t, n, func(i int) []byte { return ring[i%len(ring)] })
	// Let b catch up before the last samples.
	for i := 0; i < 500 && int(handledBy(b)()-f.base) < f.sent; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	peak, growth := h.finish()
	written, lost := reportLegit(t, tr)
	after := b.Stats()
	handled := int(dropSum(after) - dropSum(before))
	state := stateOf(b)
	t.Logf("garbage: %d datagrams in %v (%.0f/s, %d stalls), %d handled by b: malformed %d, unknown session %d, forged %d; UDP receive-buffer drops (system-wide) %d",
		f.sent, elapsed.Round(time.Millisecond), float64(f.sent)/elapsed.Seconds(), f.stalls, handled,
		after.Drops.Malformed-before.Drops.Malformed, after.Drops.UnknownSession-before.Drops.UnknownSession,
		after.Drops.Auth-before.Drops.Auth, udpRcvbufErrors()-kernel0)
	t.Logf("legit: %d written, %d lost; heap peak %s (%s above the start; live after %s); b state %+v", written, lost, mib(peak), mib(growth), h.liveGrowth(), state)

	if handled < f.sent*99/100 {
		t.Errorf("b handled %d of %d garbage datagrams", handled, f.sent)
	}
	if after.Verifications != before.Verifications || after.DatagramsIn-before.DatagramsIn > uint64(written) {
		t.Errorf("garbage reached signature verification (%d) or delivery", after.Verifications-before.Verifications)
	}
	if lost > written/1000 {
		t.Errorf("legit traffic lost %d of %d datagrams", lost, written)
	}
	if growth > floodHeapBound {
		t.Errorf("heap grew by %s during the flood", mib(growth))
	}
	if state.peers != 1 || state.sessions > 4 || state.initiated != 0 || state.responding > 2 {
		t.Errorf("garbage left state behind: %+v", state)
	}
}

// helloDatagramFrom is a valid hello from id with index, as a datagram.
// (A v4 hello carries no clock reading, and its ephemeral keys are its
// own: ts and eph are not used.)
func helloDatagramFrom(id []byte, ts time.Time, index uint32, eph *ecdh.PrivateKey) []byte {
	_, _ = ts, eph
	return helloInitFrom(id, index).Hello()
}

// helloInitFrom starts a handshake of identity id with index.
func helloInitFrom(id []byte, index uint32) *noise.Initiation {
	st, err := noise.NewStatic(ed25519.PrivateKey(id), nil)
	if err != nil {
		panic(err)
	}
	init, err := noise.NewInitiation(noise.InitiatorConfig{Static: st, Index: index})
	if err != nil {
		panic(err)
	}
	return init
}

// makeHellos makes n valid hellos as datagrams, on one goroutine per
// CPU: a flood made in advance, so that it goes as fast as the target
// takes it. At most helloPool are distinct (each from a fresh identity),
// and the rest repeat them: a v4 hello is 1,360 bytes, and 100,000
// distinct ones would hold 136 MB, which the heap bound of a flood test
// (and the collector's pacing) would charge to the Conn. A repeated hello
// costs a responder what a fresh one does (it cannot tell them apart).
func makeHellos(t testing.TB, n int) [][]byte {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, n)
	distinct := min(n, helloPool)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	now := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < distinct; i += workers {
				out[i] = helloDatagramFrom(GenerateIdentity(), now, uint32(i+1), eph)
			}
		}()
	}
	wg.Wait()
	for i := distinct; i < n; i++ {
		out[i] = out[i%distinct]
	}
	return out
}

// helloPool is how many distinct hellos makeHellos makes.
const helloPool = 4096

// helloStream makes n correctly signed hellos from fresh identities as
// makeHellos does, but timestamped when made and handed out as they are
// made (at most 64 ahead), for floods slower than their freshness
// window. The makers stop when the test ends.
func helloStream(t testing.TB, n int) <-chan []byte {
	out := make(chan []byte, 64)
	stop := make(chan struct{})
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				select {
				case out <- helloDatagramFrom(GenerateIdentity(), time.Now(), uint32(i+1), eph):
				case <-stop:
					return
				}
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return out
}

// TestFloodSpoofedHellos: correctly signed hellos from fresh identities,
// from one loopback socket that never answers the cookies, at b while a
// and b talk and rekey (every second; 3 s under -race). Once the rate
// passes CookieThreshold, b answers with cookies and verifies no more
// signatures but those of hellos that return a valid cookie: a's rekeys.
func TestFloodSpoofedHellos(t *testing.T) {
	alone(t)
	n := scaled(100_000, 5_000)
	// Under -race a signature costs b 10 times as much: the threshold
	// comes down with it, so that b still sees it passed.
	cfg := &Config{MTU: 1500, KeyLifetime: scaled(time.Second, 2*time.Second), HandshakeTimeout: time.Second,
		CookieThreshold: scaled(DefaultCookieThreshold, 100)}
	hellos := makeHellos(t, n)
	a, b := loopbackPair(t, cfg, cfg)
	tr := legitPair(t, a, b, addrOf(a), addrOf(b), scaled(2000, 500))
	before := b.Stats()
	f := newFlooder(rawUDP(t), addrOf(b), handledBy(b))
	f.window = 128
	h := startHeapSampler(10 * time.Millisecond)
	start := time.Now()
	f.send(t, n, func(i int) []byte { d := hellos[i]; hellos[i] = nil; return d }) // sent: let it go
	elapsed := time.Since(start)
	peak, growth := h.finish()
	mid := b.Stats()
	written, lost := reportLegit(t, tr)
	verified := int(mid.Verifications - before.Verifications)
	handshakes := int(mid.Handshakes - before.Handshakes)
	t.Logf("hellos: %d in %v (%.0f/s), %d stalls; b verified %d signatures, sent %d cookies, completed %d handshakes (%d rekeys with a), refused %d keys, %d stale",
		f.sent, elapsed.Round(time.Millisecond), float64(f.sent)/elapsed.Seconds(), f.stalls, verified,
		mid.CookiesSent-before.CookiesSent, handshakes, mid.Rekeys-before.Rekeys,
		mid.Drops.Rejected-before.Drops.Rejected, mid.Drops.Stale-before.Drops.Stale)
	t.Logf("legit: %d written, %d lost; heap peak %s (%s above the start; live after %s); b state %+v", written, lost, mib(peak), mib(growth), h.liveGrowth(), stateOf(b))

	// Bound: the hellos of the first second below the threshold, plus
	// two verifications per handshake that did complete (a's rekeys,
	// their retries).
	if bound := cfg.CookieThreshold + 1 + 2*handshakes + 4; verified > bound {
		t.Errorf("%d signature verifications for %d hellos, want at most %d", verified, f.sent, bound)
	}
	if mid.CookiesSent == before.CookiesSent {
		t.Errorf("no cookie sent under a flood of %.0f hellos/s", float64(f.sent)/elapsed.Seconds())
	}
	if elapsed > 2*cfg.KeyLifetime && mid.Rekeys == before.Rekeys {
		t.Errorf("no rekey with a during a %v flood (KeyLifetime %v)", elapsed, cfg.KeyLifetime)
	}
	if lost > written/1000 {
		t.Errorf("legit traffic lost %d of %d datagrams", lost, written)
	}
	if growth > floodHeapBound {
		t.Errorf("heap grew by %s during the flood", mib(growth))
	}
	// One source: one learned peer at most besides a, with at most two
	// unconfirmed sessions (a hello's key is remembered for the address
	// only once its session is confirmed, so each fresh identity's hello
	// is answered, and replaces the older waiting session), and one
	// remembered timestamp per answered hello. Its unconfirmed sessions
	// go, then the peer.
	// The state first, then the handshakes: hellos still queued when the
	// flood ended are handled meanwhile, and each answered one is
	// remembered before its session counts.
	if s, hs := stateOf(b), int(b.Stats().Handshakes-before.Handshakes); s.peers > 2 || s.sessions > 6 || s.responding > hs+2 {
		t.Errorf("state after the flood: %+v", s)
	}
	took, s, ok := waitState(b, 2*cfg.HandshakeTimeout+2*cfg.KeyLifetime+time.Second, func(s stateSizes) bool {
		return s.peers <= 1 && s.sessions <= 4
	})
	t.Logf("flood peer forgotten after %v: %+v", took.Round(time.Millisecond), s)
	if !ok {
		t.Errorf("flood peer not forgotten after %v: %+v", took, s)
	}
}

// settledHellos waits (at most waitLong) until every one of n hellos sent
// to c since before is accounted for: verified, refused for MaxPeers, or
// dropped at the full handshake queue (some may still wait on the queue
// when the flood ends). It returns the three counts.
func settledHellos(c *Conn, before Stats, n int) (verified, refused, queued int) {
	deadline := time.Now().Add(waitLong)
	for {
		s := c.Stats()
		verified = int(s.Verifications - before.Verifications)
		refused = int(s.Drops.PeerLimit - before.Drops.PeerLimit)
		queued = int(s.Drops.HandshakeQueueFull - before.Drops.HandshakeQueueFull)
		if verified+refused+queued >= n || time.Now().After(deadline) {
			return verified, refused, queued
		}
		time.Sleep(5 * time.Millisecond) // the handshake goroutine works the queue
	}
}

// TestFloodSpoofedHellosManySources: the same flood from a different
// forged source address for every hello, in memory (memNet), at b with
// MaxPeers 200 and a RateLimit (a token bucket per peer). With cookies
// (the default threshold), b verifies a few hundred signatures for the
// whole flood; without (threshold out of reach), every one, which shows
// what the cookies save, and the learned peers fill up to MaxPeers. Either
// way the learned peers never exceed MaxPeers, a keeps its session, and
// once the flood stops the learned peers (with their buckets and
// sessions) and, without cookies, the remembered timestamps (2 s window)
// are forgotten, and a new client is welcome again.
func TestFloodSpoofedHellosManySources(t *testing.T) {
	alone(t)
	for _, tc := range []struct {
		name      string
		threshold int
		n         int
	}{
		// Under -race a signature costs b 10 times as much, and b
		// verifies fewer than 500 a second: the threshold comes down
		// with it, so that b still sees it passed.
		{"cookies", scaled(DefaultCookieThreshold, 100), scaled(100_000, 5_000)},
		{"no-cookies", 1 << 30, scaled(3_000, 600)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const maxPeers = 200
			cfg := &Config{MTU: 1500, KeyLifetime: scaled(time.Second, 2*time.Second), HandshakeTimeout: 500 * time.Millisecond, RateLimit: 5000}
			cb := *cfg
			cb.MaxPeers, cb.CookieThreshold = maxPeers, tc.threshold
			var next func() []byte
			if tc.threshold < 1<<30 {
				// Made in advance: the flood runs as fast as b takes it.
				hellos := makeHellos(t, tc.n)
				i := 0
				next = func() []byte { i++; d := hellos[i-1]; hellos[i-1] = nil; return d }
			} else {
				// Made as sent: every one is verified, slowly, and
				// must still be fresh by then (within 2 s).
				cb.FreshnessWindow = 2 * time.Second
				hellos := helloStream(t, tc.n)
				next = func() []byte { return <-hellos }
			}
			mn := newMemNet()
			ma, mb := mn.listen(t, "10.0.0.1:1000"), mn.listen(t, "10.0.0.2:2000")
			a, b := wrapT(t, ma, cfg), wrapT(t, mb, &cb)
			handshakeT(t, a, mb.addr)
			handshakeT(t, b, ma.addr)
			tr := legitPair(t, a, b, ma.addr, mb.addr, scaled(1000, 300))

			before := b.Stats()
			h := startHeapSampler(10 * time.Millisecond)
			start := time.Now()
			maxLearned, maxResponding := 0, 0
			for i := 0; i < tc.n; i++ {
				for {
					mb.mu.Lock()
					q := len(mb.q)
					mb.mu.Unlock()
					if q < 64 {
						break
					}
					time.Sleep(20 * time.Microsecond)
				}
				from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}), uint16(1024+i%50000))
				mn.inject(from, mb.addr, next())
				if i%256 == 0 {
					s := stateOf(b)
					maxLearned, maxResponding = max(maxLearned, s.learned), max(maxResponding, s.responding)
					if s.learned > maxPeers || s.peers > maxPeers {
						t.Fatalf("after %d hellos: %+v, MaxPeers %d", i, s, maxPeers)
					}
				}
			}
			mb.quiesce(t)
			elapsed := time.Since(start)
			peak, growth := h.finish()
			mid := b.Stats()
			written, lost := reportLegit(t, tr)
			verified := int(mid.Verifications - before.Verifications)
			t.Logf("hellos: %d from as many addresses in %v (%.0f/s); b verified %d signatures, sent %d cookies, completed %d handshakes (%d rekeys with a), refused %d for MaxPeers, %d stale; at most %d learned peers, %d remembered timestamps",
				tc.n, elapsed.Round(time.Millisecond), float64(tc.n)/elapsed.Seconds(), verified, mid.CookiesSent-before.CookiesSent,
				mid.Handshakes-before.Handshakes, mid.Rekeys-before.Rekeys, mid.Drops.PeerLimit-before.Drops.PeerLimit,
				mid.Drops.Stale-before.Drops.Stale, maxLearned, maxResponding)
			t.Logf("legit: %d written, %d lost (memNet queue drops %d); heap peak %s (%s above the start; live after %s)", written, lost, memDropped(mb), mib(peak), mib(growth), h.liveGrowth())

			if tc.threshold < 1<<30 {
				// The hellos of the first second, and a's rekeys (each
				// maybe retried).
				if bound := tc.threshold + 1 + 2*int(mid.Rekeys-before.Rekeys) + 4; verified > bound {
					t.Errorf("%d signature verifications for %d hellos, want at most %d", verified, tc.n, bound)
				}
			} else if verified, refused, queued := settledHellos(b, before, tc.n); verified+refused+queued < tc.n {
				// Hellos from new addresses while the table is full are
				// refused before verification, those that find the
				// handshake queue full are dropped; every other one is
				// verified.
				t.Errorf("without cookies: %d verifications, %d refusals and %d dropped at the full handshake queue for %d hellos", verified, refused, queued, tc.n)
			}
			// More answered hellos than MaxPeers: either the table filled
			// and MaxPeers refused some, or never-confirmed learned peers
			// were forgotten fast enough (after HandshakeTimeout) that it
			// never filled.
			if mid.Drops.PeerLimit == before.Drops.PeerLimit && verified > maxPeers && maxLearned >= maxPeers {
				t.Errorf("MaxPeers never refused a handshake, yet %d learned peers were held", maxLearned)
			}
			if lost > written/1000 {
				t.Errorf("legit traffic lost %d of %d datagrams in memory", lost, written)
			}
			if growth > floodHeapBound {
				t.Errorf("heap grew by %s during the flood", mib(growth))
			}
			// What the flood left is forgotten: unconfirmed sessions after
			// HandshakeTimeout, idle peers 1.5 KeyLifetime after they were
			// last seen; without cookies, the timestamps after the window.
			// (a's own session may end too: nothing renews it once the
			// traffic has stopped, and then a, idle, goes as well.)
			took, s, ok := waitState(b, 2*cb.HandshakeTimeout+2*cb.KeyLifetime+2*cb.FreshnessWindow+time.Second, func(s stateSizes) bool {
				return s.peers <= 1 && s.sessions <= 4 && (tc.threshold < 1<<30 || s.responding <= 2)
			})
			t.Logf("flood state forgotten after %v: %+v", took.Round(time.Millisecond), s)
			if !ok {
				t.Fatalf("flood state not forgotten after %v: %+v", took, s)
			}
			// A new client is welcome again.
			mc := mn.listen(t, "10.0.0.3:3000")
			c := wrapT(t, mc, cfg)
			if _, err := c.WriteToUDPAddrPort([]byte("after the flood"), mb.addr); err != nil {
				t.Fatal(err)
			}
			expectRead(t, b, "after the flood", mc.addr)
		})
	}
}

// tapConn records the datagrams a Conn writes to one address (up to max),
// as an eavesdropper on the path would: the replay attacker's capture.
// It has exactly the methods of net.PacketConn.
type tapConn struct {
	pc  *net.UDPConn
	to  netip.AddrPort
	max int

	mu       sync.Mutex
	captured [][]byte
}

func (c *tapConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok && normAddr(ua.AddrPort()) == c.to {
		c.mu.Lock()
		if len(c.captured) < c.max {
			c.captured = append(c.captured, append([]byte(nil), b...))
		}
		c.mu.Unlock()
	}
	return c.pc.WriteTo(b, addr)
}
func (c *tapConn) ReadFrom(b []byte) (int, net.Addr, error) { return c.pc.ReadFrom(b) }
func (c *tapConn) Close() error                             { return c.pc.Close() }
func (c *tapConn) LocalAddr() net.Addr                      { return c.pc.LocalAddr() }
func (c *tapConn) SetDeadline(t time.Time) error            { return c.pc.SetDeadline(t) }
func (c *tapConn) SetReadDeadline(t time.Time) error        { return c.pc.SetReadDeadline(t) }
func (c *tapConn) SetWriteDeadline(t time.Time) error       { return c.pc.SetWriteDeadline(t) }

func (c *tapConn) capture() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.captured...)
}

// TestFloodReplay: the attacker captures a's datagrams to b (the hello,
// the keepalive, sealed traffic) and replays them at b, over and over,
// half from a's own address (a forged source, the strongest replay) and
// half from its own socket, while a and b talk. Every replay is dropped
// (replayed counter, stale hello), nothing is delivered twice, and no
// replay moves a's peer to the attacker's address or creates a peer.
func TestFloodReplay(t *testing.T) {
	alone(t)
	n := scaled(200_000, 20_000)
	b := listenT(t, "udp4", "127.0.0.1:0", &Config{MTU: 1500})
	b.SetReadBuffer(4 << 20)
	upc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	upc.SetReadBuffer(4 << 20)
	tap := &tapConn{pc: upc, to: addrOf(b), max: 4096}
	a := wrapT(t, tap, &Config{MTU: 1500})
	handshakeT(t, a, addrOf(b))
	handshakeT(t, b, addrOf(a))
	tr := legitPair(t, a, b, addrOf(a), addrOf(b), scaled(2000, 500))
	for len(tap.capture()) < 1000 {
		time.Sleep(10 * time.Millisecond)
	}
	captured := tap.capture()
	sealed := 0
	for _, d := range captured {
		if d[1] == typeSealed {
			sealed++
		}
	}

	attacker := rawUDP(t)
	before := b.Stats()
	kernel0 := udpRcvbufErrors()
	fromA := newFlooder(upc, addrOf(b), handledBy(b))
	fromX := newFlooder(attacker, addrOf(b), handledBy(b))
	h := startHeapSampler(10 * time.Millisecond)
	start := time.Now()
	base0 := handledBy(b)()
	for i := 0; i < n; i += 1024 {
		k := min(1024, n-i)
		f := fromA
		if (i/1024)%2 == 1 {
			f = fromX
		}
		// Pace on what b has handled of both: fromA.sent+fromX.sent
		// sent in all.
		f.base = base0 + uint64(fromA.sent+fromX.sent) - uint64(f.sent)
		f.send(t, k, func(j int) []byte { return captured[(i+j)%len(captured)] })
	}
	elapsed := time.Since(start)
	peak, growth := h.finish()
	written, lost := reportLegit(t, tr)
	after := b.Stats()
	d := func(f func(Stats) uint64) uint64 { return f(after) - f(before) }
	handled := int(dropSum(after) - dropSum(before))
	t.Logf("replays: %d of %d captured datagrams (%d sealed) in %v (%.0f/s); b dropped %d: replayed %d, stale %d, unknown session %d; UDP receive-buffer drops (system-wide) %d",
		n, len(captured), sealed, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), handled,
		d(func(s Stats) uint64 { return s.Drops.Replay }), d(func(s Stats) uint64 { return s.Drops.Stale }),
		d(func(s Stats) uint64 { return s.Drops.UnknownSession }), udpRcvbufErrors()-kernel0)
	t.Logf("legit: %d written, %d lost; heap peak %s (%s above the start; live after %s); b state %+v", written, lost, mib(peak), mib(growth), h.liveGrowth(), stateOf(b))

	if handled < n*99/100 {
		t.Errorf("b dropped %d of %d replays", handled, n)
	}
	if lost > written/1000 {
		t.Errorf("legit traffic lost %d of %d datagrams", lost, written)
	}
	if growth > floodHeapBound {
		t.Errorf("heap grew by %s during the flood", mib(growth))
	}
	ps := b.Peers()
	if len(ps) != 1 || ps[0].Addr != addrOf(a) || b.HasPeer(addrOf2(attacker)) {
		t.Errorf("after the replays b's peers are %+v: want a alone, at its own address", ps)
	}
}

// TestFloodPendingInitiationsBounded: the application writes to thousands
// of addresses where nobody answers (a scan, or a bug). Each becomes a
// learned peer with a pending initiation and a queued datagram, up to
// MaxPeers; writes beyond are dropped and counted (not errors: UDP's write
// contract); every initiation ends
// at HandshakeTimeout, its datagram dropped and counted; the idle peers
// are then forgotten.
func TestFloodPendingInitiationsBounded(t *testing.T) {
	heavy(t)
	n := scaled(5000, 1000)
	const maxPeers = 300
	mn := newMemNet()
	mb := mn.listen(t, "10.0.0.2:2000")
	b := wrapT(t, mb, &Config{MTU: 1500, MaxPeers: maxPeers, HandshakeTimeout: 300 * time.Millisecond, KeyLifetime: 400 * time.Millisecond})
	before := b.Stats()
	maxInit := 0
	for i := range n {
		to := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2 + byte(i>>8), byte(i)}), 9)
		if _, err := b.WriteToUDPAddrPort([]byte("anyone?"), to); err != nil {
			t.Fatal(err)
		}
		if i%64 == 0 {
			s := stateOf(b)
			maxInit = max(maxInit, s.initiated)
			if s.learned > maxPeers || s.initiated > 2*maxPeers {
				t.Fatalf("after %d writes: %+v", i, s)
			}
		}
	}
	mid := b.Stats()
	refused := int(mid.Drops.WritePeerLimit - before.Drops.WritePeerLimit)
	ok := n - refused
	t.Logf("%d writes to silent addresses: %d queued, %d refused (MaxPeers %d); at most %d pending initiations; state %+v",
		n, ok, refused, maxPeers, maxInit, stateOf(b))
	if refused == 0 || ok < maxPeers {
		t.Errorf("%d writes queued, %d dropped (Drops.WritePeerLimit); want at least %d queued and some dropped", ok, refused, maxPeers)
	}
	took, s, done := waitState(b, 5*time.Second, func(s stateSizes) bool { return s.peers == 0 && s.initiated == 0 && s.sessions == 0 })
	after := b.Stats()
	t.Logf("all gone after %v: %+v; failures %d, queued datagrams dropped %d", took.Round(time.Millisecond), s,
		after.HandshakeFailures-before.HandshakeFailures, after.Drops.HandshakeTimeout-before.Drops.HandshakeTimeout)
	if !done {
		t.Fatalf("pending state not forgotten after %v: %+v", took, s)
	}
	if int(after.Drops.HandshakeTimeout-before.Drops.HandshakeTimeout) != ok {
		t.Errorf("%d queued datagrams, %d counted as dropped at the handshake timeout", ok, after.Drops.HandshakeTimeout-before.Drops.HandshakeTimeout)
	}
}

// TestFloodDataRateLimited: an authenticated peer, a, floods b with data
// as fast as it can, while another peer, c, sends at a modest pace. b's
// per-peer token bucket (RateLimit 500/s, burst 500) passes at most the
// burst and the rate from a, drops and counts the rest, and c, with a
// bucket of its own, loses nothing. In memory (memNet), so that the
// network loses nothing either. 20,000 datagrams from a (5,000 under
// -race).
func TestFloodDataRateLimited(t *testing.T) {
	heavy(t)
	n := scaled(20_000, 5_000)
	const rate, fromC = 500, 100
	mn := newMemNet()
	ma, mb, mc := mn.listen(t, "10.0.0.1:1000"), mn.listen(t, "10.0.0.2:2000"), mn.listen(t, "10.0.0.3:3000")
	cfg := &Config{MTU: 1500, Padding: PadNone}
	a, c := wrapT(t, ma, cfg), wrapT(t, mc, cfg)
	b := wrapT(t, mb, &Config{MTU: 1500, Padding: PadNone, RateLimit: rate})
	handshakeT(t, a, mb.addr)
	handshakeT(t, c, mb.addr)
	handshakeT(t, b, ma.addr)
	handshakeT(t, b, mc.addr)

	got := make(map[netip.AddrPort]int)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		b.SetReadDeadline(time.Now().Add(3 * waitLong))
		for {
			_, from, err := b.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			got[from]++
		}
	}()
	before := b.Stats()
	start := time.Now()
	cDone := make(chan struct{})
	go func() {
		defer close(cDone)
		for i := range fromC {
			c.WriteToUDPAddrPort([]byte("c, at a modest pace"), mb.addr)
			if i%10 == 9 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	p := make([]byte, 200)
	for i := range n {
		if i%1024 == 0 {
			mb.quiesce(t) // never overflow the in-memory queue
		}
		if _, err := a.WriteToUDPAddrPort(p, mb.addr); err != nil {
			t.Fatal(err)
		}
	}
	<-cDone
	settle(t, ma, mb, mc)
	elapsed := time.Since(start)
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) // the reader drains the queue, then stops
	<-done
	after := b.Stats()
	limited, full := after.Drops.RateLimit-before.Drops.RateLimit, after.Drops.QueueFull-before.Drops.QueueFull
	t.Logf("a sent %d in %v: %d delivered, %d over the rate limit, %d on a full read queue; c: %d of %d delivered",
		n, elapsed.Round(time.Millisecond), got[ma.addr], limited, full, got[mc.addr], fromC)
	if bound := rate + int(rate*elapsed.Seconds()) + 10; got[ma.addr] > bound {
		t.Errorf("delivered %d datagrams from a in %v, RateLimit %d/s allows %d", got[ma.addr], elapsed, rate, bound)
	}
	if got[ma.addr]+int(limited)+int(full) != n+fromC-got[mc.addr] {
		t.Errorf("a's datagrams: %d delivered + %d limited + %d on a full queue, want %d", got[ma.addr], limited, full, n)
	}
	if got[mc.addr] != fromC {
		t.Errorf("c, within its rate, got %d of %d datagrams through", got[mc.addr], fromC)
	}
}

func memDropped(m *memConn) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropped
}
