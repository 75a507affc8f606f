package vaultudp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Tests of the Conn over loopback sockets (127.0.0.1 and ::1) and over an
// in-memory PacketConn. No test sleeps to synchronise: they wait on
// deadlines, channels, Handshake, the FIFO order of one socket's datagrams
// (see strangerBarrier) or the in-memory network's quiescence (memConn).

// helloDatagram is a valid hello from a fresh identity, as a datagram:
// what a stranger sends to start a handshake.
func helloDatagram(t testing.TB) []byte {
	t.Helper()
	// A random sender index, as a real initiator's: a Conn answers a
	// hello (its sender index and ephemeral key) once per source
	// (answeredLocked).
	return newStrangerInit(t, mrand.Uint32()|1).Hello()
}

// newStrangerInit starts a handshake of a fresh identity with index idx.
func newStrangerInit(t testing.TB, idx uint32) *noise.Initiation {
	t.Helper()
	st, err := noise.NewStatic(GenerateIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	init, err := noise.NewInitiation(noise.InitiatorConfig{Static: st, Index: idx})
	if err != nil {
		t.Fatal(err)
	}
	return init
}

// strangerSession completes a whole handshake with c from a plain
// socket, as a stranger with a fresh identity, and returns the socket
// once c has confirmed the session (its first sealed datagram came).
func strangerSession(t testing.TB, c *Conn) *net.UDPConn {
	t.Helper()
	raw := rawUDP(t)
	init := newStrangerInit(t, 0x5157)
	if _, err := raw.WriteToUDPAddrPort(init.Hello(), addrOf(c)); err != nil {
		t.Fatal(err)
	}
	raw.SetReadDeadline(time.Now().Add(waitLong))
	defer raw.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	want := byte(typeReply)
	for range 100 {
		n, _, err := raw.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("stranger's handshake: %v", err)
		}
		if n < 8 || buf[0] != ProtocolVersion || buf[1] != want {
			continue
		}
		if want == typeSealed {
			return raw
		}
		if _, err := init.ReadReply(buf[:n]); err != nil {
			t.Fatal(err)
		}
		final, _, err := init.WriteFinal(&noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.WriteToUDPAddrPort(final, addrOf(c)); err != nil {
			t.Fatal(err)
		}
		want = typeSealed
	}
	t.Fatal("stranger's handshake: no answer among 100 datagrams")
	return nil
}

// strangerBarrier sends a hello from raw to c's address and waits for the
// reply. A Conn handles the datagrams of one source in the order they
// arrive, on one goroutine, so when the reply comes every datagram raw
// sent before the hello has been handled. (raw becomes a learned peer.)
func strangerBarrier(t testing.TB, raw *net.UDPConn, to netip.AddrPort) {
	t.Helper()
	if _, err := raw.WriteToUDPAddrPort(helloDatagram(t), to); err != nil {
		t.Fatal(err)
	}
	raw.SetReadDeadline(time.Now().Add(waitLong))
	defer raw.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for range 100 {
		n, from, err := raw.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("barrier: no reply to the stranger's hello: %v", err)
		}
		if normAddr(from) == normAddr(to) && n > 8 && buf[0] == ProtocolVersion && buf[1] == typeReply {
			return
		}
	}
	t.Fatal("barrier: no reply among 100 datagrams")
}

// waitBlockedIn waits until some goroutine is parked (select or channel
// receive) inside a function whose name contains fn: the way to know that
// a call is blocked, so that what the test does next happens while it is.
func waitBlockedIn(t testing.TB, fn string) {
	t.Helper()
	waitStack(t, "no goroutine blocked in "+fn, func(g string) bool {
		return strings.Contains(g, fn) && (strings.Contains(g, "[select") || strings.Contains(g, "[chan receive") || strings.Contains(g, "[IO wait"))
	})
}

// waitStack waits until the stack of some goroutine satisfies match, or
// fails t with what after waitLong.
func waitStack(t testing.TB, what string, match func(stack string) bool) {
	t.Helper()
	buf := make([]byte, 1<<20)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	timeout := time.After(waitLong)
	for {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if match(g) {
				return
			}
		}
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatal(what)
		}
	}
}

func TestSmokeRoundTrip(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	if _, err := a.WriteToUDPAddrPort([]byte("hello"), addrOf(b)); err != nil {
		t.Fatal(err)
	}
	got, from := readWithin(t, b, 5*time.Second)
	if string(got) != "hello" || from != addrOf(a) {
		t.Fatalf("got %q from %v", got, from)
	}
	if _, err := b.WriteTo([]byte("world"), net.UDPAddrFromAddrPort(from)); err != nil {
		t.Fatal(err)
	}
	got, _ = readWithin(t, a, 5*time.Second)
	if string(got) != "world" {
		t.Fatalf("got %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Handshake(ctx, addrOf(b)); err != nil {
		t.Fatal(err)
	}
	t.Logf("a: %+v", a.Stats())
	t.Logf("b: %+v", b.Stats())
}

// ---- Bulk exchange with flow control ----

// The flow protocol of exchange. Each side sends its datagrams in windows
// and waits for the receiver to acknowledge a whole window before the
// next, so no more than a window is ever in flight per direction: far
// below the read queue and the socket buffer, hence no loss on loopback,
// and any loss or duplicate is a failure.
//
//	len < flowHdr:  a small data datagram, every byte 's' (counted)
//	'D' seq numEnd smallEnd payload: numbered data; numEnd and smallEnd
//	                are the sender's totals once this window is sent
//	'A' numEnd:     the receiver has every datagram up to numEnd/smallEnd
//	'F' numEnd smallEnd: the sender has finished
const flowHdr = 13

type flowOpts struct {
	count    int           // datagrams each way, at most
	duration time.Duration // if > 0, start no window after this long
	window   int           // datagrams per window
	maxSize  int           // sizes are drawn from 0..maxSize
}

type flowSide struct {
	c    *Conn
	peer netip.AddrPort
	dir  byte
	acks chan uint32
	sent atomic.Int64
	done atomic.Bool // the sender has sent its 'F'
}

// flowFill fills b with the content of datagram seq of direction dir:
// pseudo-random bytes, or a compressible run for every fifth datagram.
func flowFill(b []byte, dir byte, seq uint32) {
	if seq%5 == 0 {
		for i := range b {
			b[i] = byte(seq) ^ byte(i/64)
		}
		return
	}
	x := (uint64(seq)<<8 | uint64(dir)) * 0x9E3779B97F4A7C15
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x >> 32)
	}
}

// exchange runs the flow protocol both ways at once between a and b and
// returns the number of datagrams each sent.
func exchange(t *testing.T, a, b *Conn, o flowOpts) (int, int) {
	t.Helper()
	sa := &flowSide{c: a, peer: addrOf(b), dir: 'a', acks: make(chan uint32, 4)}
	sb := &flowSide{c: b, peer: addrOf(a), dir: 'b', acks: make(chan uint32, 4)}
	var (
		mu    sync.Mutex
		errs  []string
		abort = make(chan struct{})
		once  sync.Once
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		errs = append(errs, fmt.Sprintf(format, args...))
		mu.Unlock()
		once.Do(func() {
			close(abort)
			a.SetReadDeadline(time.Now())
			b.SetReadDeadline(time.Now())
		})
	}
	aborted := func() bool { return isClosed(abort) }
	start := time.Now()
	watchdog := start.Add(4*waitLong + o.duration)
	a.SetReadDeadline(watchdog)
	b.SetReadDeadline(watchdog)
	defer a.SetReadDeadline(time.Time{})
	defer b.SetReadDeadline(time.Time{})

	send := func(s *flowSide) {
		rng := mrand.New(mrand.NewPCG(uint64(s.dir), 42))
		buf := make([]byte, o.maxSize)
		var numEnd, smallEnd uint32
		ack := time.NewTimer(waitLong)
		defer ack.Stop()
		for int(s.sent.Load()) < o.count && (o.duration == 0 || time.Since(start) < o.duration) {
			sizes := make([]int, min(o.window, o.count-int(s.sent.Load())))
			for i := range sizes {
				switch r := rng.IntN(8); {
				case r == 0:
					sizes[i] = rng.IntN(flowHdr) // small, 0 included
				case r == 1:
					sizes[i] = o.maxSize
				case r == 2:
					sizes[i] = o.maxSize - rng.IntN(16)
				default:
					sizes[i] = rng.IntN(o.maxSize + 1)
				}
			}
			sizes[len(sizes)-1] = max(sizes[len(sizes)-1], flowHdr) // the window's end is numbered
			seq := numEnd
			for _, n := range sizes {
				if n < flowHdr {
					smallEnd++
				} else {
					numEnd++
				}
			}
			for _, n := range sizes {
				p := buf[:n]
				if n < flowHdr {
					for i := range p {
						p[i] = 's'
					}
				} else {
					p[0] = 'D'
					binary.BigEndian.PutUint32(p[1:], seq)
					binary.BigEndian.PutUint32(p[5:], numEnd)
					binary.BigEndian.PutUint32(p[9:], smallEnd)
					flowFill(p[flowHdr:], s.dir, seq)
					seq++
				}
				if _, err := s.c.WriteToUDPAddrPort(p, s.peer); err != nil {
					fail("%c: write: %v", s.dir, err)
					return
				}
				s.sent.Add(1)
			}
			ack.Reset(waitLong)
			select {
			case v := <-s.acks:
				if v != numEnd {
					fail("%c: ack %d, want %d", s.dir, v, numEnd)
					return
				}
			case <-abort:
				return
			case <-ack.C:
				fail("%c: no ack for %d/%d after %v (sent %d; stats %+v)", s.dir, numEnd, smallEnd, waitLong, s.sent.Load(), s.c.Stats())
				return
			}
		}
		fin := make([]byte, flowHdr)
		fin[0] = 'F'
		binary.BigEndian.PutUint32(fin[1:], numEnd)
		binary.BigEndian.PutUint32(fin[5:], smallEnd)
		if _, err := s.c.WriteToUDPAddrPort(fin, s.peer); err != nil {
			fail("%c: write fin: %v", s.dir, err)
			return
		}
		// Wake our receiver, which may be waiting for nothing more.
		s.done.Store(true)
		s.c.SetReadDeadline(time.Now())
	}

	receive := func(s, other *flowSide) {
		buf := make([]byte, 65536)
		want := make([]byte, 65536)
		var got []bool
		var numbered, small, curNum, curSmall, lastAck uint32
		fin := false
		for !(fin && s.done.Load()) {
			n, from, err := s.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if aborted() {
					return
				}
				if errors.Is(err, os.ErrDeadlineExceeded) && s.done.Load() && time.Now().Before(watchdog) {
					s.c.SetReadDeadline(watchdog) // woken by our sender: go on until the peer's 'F'
					continue
				}
				fail("%c: read: %v (fin %v, numbered %d/%d, small %d/%d; stats %+v)", s.dir, err, fin, numbered, curNum, small, curSmall, s.c.Stats())
				return
			}
			p := buf[:n]
			if from != s.peer {
				fail("%c: datagram from %v, want %v", s.dir, from, s.peer)
				return
			}
			if n < flowHdr {
				if !bytes.Equal(p, bytes.Repeat([]byte{'s'}, n)) {
					fail("%c: small datagram %q", s.dir, p)
					return
				}
				small++
			} else {
				switch p[0] {
				case 'D':
					seq := binary.BigEndian.Uint32(p[1:])
					ne, se := binary.BigEndian.Uint32(p[5:]), binary.BigEndian.Uint32(p[9:])
					if seq >= ne {
						fail("%c: seq %d beyond its window end %d", s.dir, seq, ne)
						return
					}
					for uint32(len(got)) < ne {
						got = append(got, false)
					}
					if got[seq] {
						fail("%c: datagram %d delivered twice", s.dir, seq)
						return
					}
					got[seq] = true
					w := want[:n-flowHdr]
					flowFill(w, other.dir, seq)
					if !bytes.Equal(p[flowHdr:], w) {
						fail("%c: datagram %d (%d bytes) differs from what was sent", s.dir, seq, n)
						return
					}
					numbered++
					curNum, curSmall = max(curNum, ne), max(curSmall, se)
				case 'A':
					select {
					case s.acks <- binary.BigEndian.Uint32(p[1:]):
					default:
						fail("%c: unexpected ack", s.dir)
						return
					}
				case 'F':
					ne, se := binary.BigEndian.Uint32(p[1:]), binary.BigEndian.Uint32(p[5:])
					if numbered != ne || small != se {
						fail("%c: peer finished at %d numbered and %d small datagrams; got %d and %d", s.dir, ne, se, numbered, small)
						return
					}
					fin = true
				default:
					fail("%c: datagram of unknown kind %q", s.dir, p[0])
					return
				}
			}
			if numbered == curNum && small == curSmall && curNum > lastAck {
				var ack [flowHdr]byte
				ack[0] = 'A'
				binary.BigEndian.PutUint32(ack[1:], curNum)
				if _, err := s.c.WriteToUDPAddrPort(ack[:], s.peer); err != nil {
					fail("%c: write ack: %v", s.dir, err)
					return
				}
				lastAck = curNum
			}
		}
	}

	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); send(sa) }()
	go func() { defer wg.Done(); send(sb) }()
	go func() { defer wg.Done(); receive(sa, sb) }()
	go func() { defer wg.Done(); receive(sb, sa) }()
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("exchange failed:\n%s", strings.Join(errs, "\n"))
	}
	return int(sa.sent.Load()), int(sb.sent.Load())
}

// checkClean fails if c dropped any datagram for a reason that loopback
// traffic between two honest Conns never causes.
func checkClean(t testing.TB, name string, c *Conn) {
	t.Helper()
	d := c.Stats().Drops
	d.Stale = 0 // retransmitted hellos and answers to them are normal
	if d != (Drops{}) {
		t.Errorf("%s dropped datagrams: %+v", name, d)
	}
}

func TestBulkExchange(t *testing.T) {
	heavy(t)
	for _, tc := range []struct {
		name, network, host string
		padding             Padding
		count               int
	}{
		{"IPv4", "udp4", "127.0.0.1", PadMTU, 10000},
		{"IPv6", "udp6", "::1", PadMTU, 10000},
		// Unpadded, so CompressAuto compresses the compressible fifth.
		{"IPv4-unpadded-compressed", "udp4", "127.0.0.1", PadNone, 3000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{MTU: 1500, Padding: tc.padding}
			a, b := pair(t, tc.network, tc.host, &cfg, &cfg)
			for _, c := range []*Conn{a, b} {
				c.SetReadBuffer(1 << 20)
				c.SetWriteBuffer(1 << 20)
			}
			handshakeT(t, a, addrOf(b))
			handshakeT(t, b, addrOf(a))
			maxSize := min(a.MaxPayload(), b.MaxPayload())
			sa, sb := exchange(t, a, b, flowOpts{count: tc.count, window: 32, maxSize: maxSize})
			if sa != tc.count || sb != tc.count {
				t.Fatalf("sent %d and %d datagrams, want %d each way", sa, sb, tc.count)
			}
			as, bs := a.Stats(), b.Stats()
			if as.DatagramsOut != bs.DatagramsIn || bs.DatagramsOut != as.DatagramsIn || as.BytesOut != bs.BytesIn || bs.BytesOut != as.BytesIn {
				t.Errorf("a sent %d datagrams (%d bytes), b received %d (%d); b sent %d (%d), a received %d (%d)",
					as.DatagramsOut, as.BytesOut, bs.DatagramsIn, bs.BytesIn, bs.DatagramsOut, bs.BytesOut, as.DatagramsIn, as.BytesIn)
			}
			checkClean(t, "a", a)
			checkClean(t, "b", b)
			expectNothing(t, a, 50*time.Millisecond)
			expectNothing(t, b, 50*time.Millisecond)
			t.Logf("a: %+v", as)
		})
	}
}

// TestRekeyUnderTraffic runs the flow both ways for about two seconds with
// sessions renewed every 300 ms: nothing may be lost or duplicated.
func TestRekeyUnderTraffic(t *testing.T) {
	heavy(t)
	cfg := Config{MTU: 1500, KeyLifetime: 300 * time.Millisecond}
	a, b := pair(t, "udp4", "127.0.0.1", &cfg, &cfg)
	handshakeT(t, a, addrOf(b))
	sa, sb := exchange(t, a, b, flowOpts{count: 1 << 30, duration: 2 * time.Second, window: 16, maxSize: 300})
	as, bs := a.Stats(), b.Stats()
	t.Logf("sent %d and %d; a: %+v; b: %+v", sa, sb, as, bs)
	if as.Rekeys == 0 && bs.Rekeys == 0 {
		t.Errorf("no rekey in 2 s with a KeyLifetime of 300 ms")
	}
	if as.DatagramsOut != bs.DatagramsIn || bs.DatagramsOut != as.DatagramsIn {
		t.Errorf("a sent %d, b received %d; b sent %d, a received %d", as.DatagramsOut, bs.DatagramsIn, bs.DatagramsOut, as.DatagramsIn)
	}
	checkClean(t, "a", a)
	checkClean(t, "b", b)
}

// ---- Sizes ----

// TestTooLarge: with StrictMTU, a write that does not fit the path MTU
// is refused with an error matching ErrMessageTooLarge and EMSGSIZE;
// exactly MaxPayload goes through. (Without it, larger datagrams are sent
// as a UDP socket sends them: TestSizesAsUDP.)
func TestTooLarge(t *testing.T) {
	parallel(t)
	for _, tc := range []struct{ network, host string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(tc.network, func(t *testing.T) {
			for _, pad := range []Padding{PadMTU, PadNone, PadBlock(64)} {
				cfg := Config{MTU: 1500, Padding: pad, StrictMTU: true}
				a, b := pair(t, tc.network, tc.host, &cfg, &cfg)
				max := a.MaxPayload()
				if max < 1280 {
					t.Fatalf("MaxPayload %d with MTU 1500 on %s, want >= 1280 (quic-go's Initial)", max, tc.network)
				}
				if s := a.Stats(); s.MaxPayload != max || s.MTU != 1500 {
					t.Errorf("Stats: MaxPayload %d, MTU %d; want %d, 1500", s.MaxPayload, s.MTU, max)
				}
				big := make([]byte, max+1)
				n, err := a.WriteToUDPAddrPort(big, addrOf(b))
				if n != 0 || !errors.Is(err, ErrMessageTooLarge) || !errors.Is(err, syscall.EMSGSIZE) {
					t.Fatalf("write of %d bytes: %d, %v; want 0 and an error matching ErrMessageTooLarge and EMSGSIZE", max+1, n, err)
				}
				if _, err := a.WriteTo(big, net.UDPAddrFromAddrPort(addrOf(b))); !errors.Is(err, syscall.EMSGSIZE) {
					t.Fatalf("WriteTo of %d bytes: %v, want EMSGSIZE", max+1, err)
				}
				if a.Stats().Drops.TooLarge != 2 {
					t.Errorf("Drops.TooLarge = %d, want 2", a.Stats().Drops.TooLarge)
				}
				// Exactly MaxPayload goes through, incompressible and
				// compressible.
				random := make([]byte, max)
				rand.Read(random)
				for _, p := range [][]byte{random, bytes.Repeat([]byte("z"), max)} {
					if n, err := a.WriteToUDPAddrPort(p, addrOf(b)); n != max || err != nil {
						t.Fatalf("write of MaxPayload (%d) bytes: %d, %v", max, n, err)
					}
					got, from := readWithin(t, b, waitLong)
					if !bytes.Equal(got, p) || from != addrOf(a) {
						t.Fatalf("padding %v: got %d bytes from %v, want the %d sent from %v", pad, len(got), from, max, addrOf(a))
					}
				}
				checkClean(t, "b", b)
				a.Close()
				b.Close()
			}
		})
	}
}

// TestShortReadBuffer: as with *net.UDPConn, a datagram longer than the
// read buffer is cut to it, without an error, and the rest is lost.
func TestShortReadBuffer(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	for _, m := range []string{"0123456789", "next"} {
		if _, err := a.WriteToUDPAddrPort([]byte(m), addrOf(b)); err != nil {
			t.Fatal(err)
		}
	}
	b.SetReadDeadline(time.Now().Add(waitLong))
	small := make([]byte, 4)
	n, _, err := b.ReadFrom(small)
	if err != nil || string(small[:n]) != "0123" {
		t.Fatalf("short read: %q, %v; want \"0123\", nil", small[:n], err)
	}
	n, _, err = b.ReadFrom(small)
	if err != nil || string(small[:n]) != "next" {
		t.Fatalf("next read: %q, %v; want \"next\", nil", small[:n], err)
	}
}

// TestQueuedOrder: datagrams written back to back to a new peer, the first
// ones waiting for the handshake and the later ones sent as soon as it is
// done, arrive in the order written (loopback keeps the order of one
// socket's datagrams, so any reordering would be the Conn's).
func TestQueuedOrder(t *testing.T) {
	parallel(t)
	for round := range 20 {
		a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
		const n = 24 // within the handshake queue, whatever the timing
		for i := range n {
			if _, err := a.WriteToUDPAddrPort([]byte(fmt.Sprint(i)), addrOf(b)); err != nil {
				t.Fatal(err)
			}
		}
		for i := range n {
			got, _ := readWithin(t, b, waitLong)
			if string(got) != fmt.Sprint(i) {
				t.Fatalf("round %d: datagram %d is %q", round, i, got)
			}
		}
		a.Close()
		b.Close()
	}
}

// ---- Handshake failures ----

func TestHandshakeTimeout(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	a := fakeListen(t, clk, &Config{HandshakeTimeout: 300 * time.Millisecond})
	dead := deadPort(t, "udp4", "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Handshake(ctx, dead) }()
	if !pollUntil(waitLong, func() bool { return peerState(a, dead).attempt }) {
		t.Fatal("Handshake sent no hello")
	}
	for i := range 3 {
		if n, err := a.WriteToUDPAddrPort([]byte("queued"), dead); err != nil || n != 6 {
			t.Fatalf("write %d before the handshake failed: %d, %v; want 6, nil (queued)", i, n, err)
		}
	}
	clk.advance(t, 300*time.Millisecond-time.Millisecond, 50*time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Handshake returned before HandshakeTimeout: %v", err)
	default:
	}
	clk.advance(t, 2*time.Millisecond, 0)
	var err error
	select {
	case err = <-done:
	case <-time.After(waitLong):
		t.Fatal("Handshake did not return at HandshakeTimeout")
	}
	if !errors.Is(err, ErrHandshakeTimeout) {
		t.Fatalf("Handshake with a dead port: %v, want ErrHandshakeTimeout", err)
	}
	s := a.Stats()
	if s.Drops.HandshakeTimeout != 3 || s.HandshakeFailures != 1 {
		t.Errorf("Drops.HandshakeTimeout %d, HandshakeFailures %d; want 3, 1", s.Drops.HandshakeTimeout, s.HandshakeFailures)
	}
	if s.DatagramsOut != 0 {
		t.Errorf("DatagramsOut %d, want 0", s.DatagramsOut)
	}
	// UDP's write contract: a write in the back-off after the failure is
	// dropped and counted, not an error (quic-go and kcp-go end their
	// sessions on write errors).
	if n, err := a.WriteToUDPAddrPort([]byte("later"), dead); err != nil || n != 5 {
		t.Fatalf("write after the failure: %d, %v; want 5, nil (dropped and counted)", n, err)
	}
	if got := a.Stats().Drops.WriteBackoff; got != 1 {
		t.Errorf("Drops.WriteBackoff %d, want 1", got)
	}
	for _, p := range a.Peers() {
		if p.Addr == dead && p.Established {
			t.Errorf("peer %v established", dead)
		}
	}
}

func TestPinnedKeyMismatch(t *testing.T) {
	parallel(t)
	wrong := GenerateIdentity().Public().(ed25519.PublicKey)
	short := &Config{HandshakeTimeout: 300 * time.Millisecond}

	t.Run("initiator pins", func(t *testing.T) {
		a, b := pair(t, "udp4", "127.0.0.1", short, nil)
		if err := a.AddPeer(PeerConfig{Addr: addrOf(b), PublicKey: wrong}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		err := a.Handshake(ctx, addrOf(b))
		if !errors.Is(err, ErrPeerRejected) || !strings.Contains(err.Error(), EncodePublicKey(wrong)) ||
			!strings.Contains(err.Error(), EncodePublicKey(b.PublicKey())) {
			t.Fatalf("Handshake with a wrong pinned key: %v, want ErrPeerRejected naming both keys", err)
		}
		// The refusal lasts: writes fail with it, and PeerInfo keeps it.
		if _, werr := a.WriteToUDPAddrPort([]byte("refused"), addrOf(b)); !errors.Is(werr, ErrPeerRejected) {
			t.Errorf("write to a refused peer: %v, want ErrPeerRejected", werr)
		}
		if s := a.Stats(); s.Drops.Rejected == 0 || s.Handshakes != 0 {
			t.Errorf("a: Rejected %d, Handshakes %d; want > 0, 0", s.Drops.Rejected, s.Handshakes)
		}
		ps := a.PeersByIP(addrOf(b).Addr())
		if len(ps) != 1 || ps[0].Established || !bytes.Equal(ps[0].PublicKey, wrong) || !ps[0].Configured {
			t.Errorf("a's peers: %+v; want one configured, not established, with the pinned key", ps)
		}
		if len(ps) == 1 && !errors.Is(ps[0].LastFailure, ErrPeerRejected) {
			t.Errorf("PeerInfo.LastFailure %v, want ErrPeerRejected", ps[0].LastFailure)
		}
	})

	// Both sides start handshakes; b pins a wrong key for a, so it refuses
	// a's hello and a's reply to its own. b has no session and delivers
	// nothing a writes. (a, having answered b's hello, may hold a
	// responder session that b never completed: the one-round-trip
	// handshake lets a responder with no other session send at once; its
	// datagrams reach b as unknown sessions.)
	t.Run("both initiate, one pins", func(t *testing.T) {
		a, b := pair(t, "udp4", "127.0.0.1", short, short)
		if err := b.AddPeer(PeerConfig{Addr: addrOf(a), PublicKey: wrong}); err != nil {
			t.Fatal(err)
		}
		if err := a.AddPeer(PeerConfig{Addr: addrOf(b)}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := b.Handshake(ctx, addrOf(a)); !errors.Is(err, ErrPeerRejected) {
			t.Fatalf("b: Handshake with a wrong pinned key: %v, want ErrPeerRejected", err)
		}
		if _, err := a.WriteToUDPAddrPort([]byte("lost"), addrOf(b)); err != nil && !errors.Is(err, ErrHandshakeTimeout) {
			t.Fatal(err)
		}
		// a's datagrams to b, if any, went before this one on one path.
		raw := rawUDP(t)
		strangerBarrier(t, raw, addrOf(a))
		if _, err := a.WriteToUDPAddrPort([]byte("lost too"), addrOf(b)); err != nil && !errors.Is(err, ErrHandshakeTimeout) {
			t.Fatal(err)
		}
		expectNothing(t, b, 100*time.Millisecond)
		if s := b.Stats(); s.Drops.Rejected == 0 || s.DatagramsIn != 0 || s.Handshakes != 0 {
			t.Errorf("b: Rejected %d, DatagramsIn %d, Handshakes %d; want > 0, 0, 0", s.Drops.Rejected, s.DatagramsIn, s.Handshakes)
		}
		t.Logf("a: %+v", a.Stats())
		t.Logf("b: %+v", b.Stats())
	})

	t.Run("VerifyPeer refuses", func(t *testing.T) {
		refused := errors.New("not on the list")
		var calls atomic.Int32
		a, b := pair(t, "udp4", "127.0.0.1", short, &Config{VerifyPeer: func(netip.AddrPort, ed25519.PublicKey) error {
			calls.Add(1)
			return refused
		}})
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := a.Handshake(ctx, addrOf(b)); !errors.Is(err, ErrHandshakeTimeout) {
			t.Fatalf("Handshake with a peer whose VerifyPeer refuses: %v, want ErrHandshakeTimeout", err)
		}
		if calls.Load() == 0 || b.Stats().Drops.Rejected == 0 {
			t.Errorf("VerifyPeer called %d times, Rejected %d", calls.Load(), b.Stats().Drops.Rejected)
		}
	})
}

// TestTrustOnFirstUse: with no pinned key and no VerifyPeer, the first key
// seen from an address is remembered; another identity on that address is
// refused until the peer is removed.
func TestTrustOnFirstUse(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	bAddr := addrOf(b)
	if _, err := b.WriteToUDPAddrPort([]byte("first"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "first", bAddr)
	b.Close()

	c, err := Listen("udp4", bAddr.String(), &Config{HandshakeTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Skipf("cannot listen again on %v: %v", bAddr, err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("impostor"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.Handshake(ctx, addrOf(a)); !errors.Is(err, ErrHandshakeTimeout) {
		t.Fatalf("a new identity on a known address: Handshake %v, want ErrHandshakeTimeout", err)
	}
	if s := a.Stats(); s.Drops.Rejected == 0 {
		t.Errorf("a: Rejected %d, want > 0", s.Drops.Rejected)
	}
	expectNothing(t, a, 20*time.Millisecond)
	if ps := a.PeersByIP(bAddr.Addr()); len(ps) != 1 || !bytes.Equal(ps[0].PublicKey, b.PublicKey()) {
		t.Errorf("a's peer at %v: %+v; want b's key kept", bAddr, ps)
	}

	// Removing the peer forgets the key: the new identity is accepted.
	if err := a.RemovePeer(bAddr); err != nil {
		t.Fatal(err)
	}
	handshakeT(t, c, addrOf(a))
	if _, err := c.WriteToUDPAddrPort([]byte("welcome"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "welcome", bAddr)
	if ps := a.PeersByIP(bAddr.Addr()); len(ps) != 1 || !bytes.Equal(ps[0].PublicKey, c.PublicKey()) {
		t.Errorf("a's peer at %v after removal: %+v; want c's key", bAddr, ps)
	}
}

// ---- The drop-in claim ----

// echoServe is an ordinary UDP echo server, written for net.PacketConn
// with no knowledge of vaultudp. It returns at the first error.
func echoServe(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if _, err := pc.WriteTo(buf[:n], addr); err != nil {
			return
		}
	}
}

// echoCheck is an ordinary UDP echo client: it writes datagrams to server
// and checks each reply.
func echoCheck(t *testing.T, client net.PacketConn, server net.Addr) {
	t.Helper()
	buf := make([]byte, 65536)
	for i, size := range []int{1, 0, 100, 1200, 7} {
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		if _, err := client.WriteTo(msg, server); err != nil {
			t.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(waitLong))
		n, from, err := client.ReadFrom(buf)
		if err != nil {
			t.Fatalf("echo of %d bytes: %v", size, err)
		}
		if !bytes.Equal(buf[:n], msg) || from.String() != server.String() {
			t.Fatalf("echo of %d bytes: got %d bytes from %v", size, n, from)
		}
		if _, ok := from.(*net.UDPAddr); !ok {
			t.Fatalf("source is a %T, want *net.UDPAddr", from)
		}
	}
}

func TestDropInEcho(t *testing.T) {
	parallel(t)
	listeners := map[string]func() (net.PacketConn, error){
		"net.UDPConn": func() (net.PacketConn, error) { return net.ListenPacket("udp4", "127.0.0.1:0") },
		"vaultudp.Conn": func() (net.PacketConn, error) {
			return Listen("udp4", "127.0.0.1:0", nil)
		},
	}
	for _, name := range []string{"net.UDPConn", "vaultudp.Conn"} {
		t.Run(name, func(t *testing.T) {
			server, err := listeners[name]()
			if err != nil {
				t.Fatal(err)
			}
			client, err := listeners[name]()
			if err != nil {
				server.Close()
				t.Fatal(err)
			}
			defer client.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				echoServe(server)
			}()
			echoCheck(t, client, server.LocalAddr())
			server.Close()
			select {
			case <-done:
			case <-time.After(waitLong):
				t.Fatal("echoServe did not return after Close")
			}
		})
	}
}

// TestMethodSet: *Conn is a net.PacketConn with SetReadBuffer and
// SetWriteBuffer, and has no ReadMsgUDP or WriteMsgUDP, which would let
// quic-go and kcp-go read the socket beneath it and bypass decryption.
func TestMethodSet(t *testing.T) {
	parallel(t)
	var c any = (*Conn)(nil)
	if _, ok := c.(net.PacketConn); !ok {
		t.Error("*Conn is not a net.PacketConn")
	}
	if _, ok := c.(interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}); !ok {
		t.Error("*Conn lacks SetReadBuffer or SetWriteBuffer")
	}
	if _, ok := c.(interface {
		ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error)
	}); ok {
		t.Error("*Conn has ReadMsgUDP")
	}
	if _, ok := c.(interface {
		WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error)
	}); ok {
		t.Error("*Conn has WriteMsgUDP")
	}
	if _, ok := c.(interface {
		ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
		WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	}); !ok {
		t.Error("*Conn lacks ReadFromUDPAddrPort or WriteToUDPAddrPort")
	}
}

// TestFreshAddr: each ReadFrom returns its own *net.UDPAddr; callers keep
// them.
func TestFreshAddr(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	for range 2 {
		if _, err := a.WriteToUDPAddrPort([]byte("x"), addrOf(b)); err != nil {
			t.Fatal(err)
		}
	}
	b.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 16)
	_, first, err := b.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	_, second, err := b.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	f, s := first.(*net.UDPAddr), second.(*net.UDPAddr)
	if f == s || &f.IP[0] == &s.IP[0] {
		t.Fatal("two reads share an address")
	}
	f.IP[0], f.Port = 99, 1
	if s.AddrPort() != addrOf(a) {
		t.Fatalf("changing one address changed the other: %v", s)
	}
}

// ---- Wrap over an in-memory PacketConn ----

// memNet is a tiny in-memory UDP network, enough for Wrap: a datagram
// written to an address is queued, synchronously and in order, at the
// memConn listening there (and lost if there is none). tap, if set, sees
// every datagram written (not injected). It is written here rather than
// taken from vaulttest so that these tests depend on nothing else.
type memNet struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*memConn
	tap   func(from, to netip.AddrPort, b []byte)
	drop  func(from, to netip.AddrPort, b []byte) bool // true: lost on the way
}

type memDatagram struct {
	from netip.AddrPort
	b    []byte
}

// memConn is one endpoint of a memNet. It records whether its reader is
// waiting with nothing queued, so that a test can wait until every
// datagram sent to it has been handled (quiesce).
type memConn struct {
	n    *memNet
	addr netip.AddrPort

	mu       sync.Mutex
	q        []memDatagram
	idle     bool // a ReadFrom waits with nothing queued
	closed   bool
	received int
	dropped  int
	changed  chan struct{} // closed and replaced on every change
}

const memQueueLen = 4096

func newMemNet() *memNet { return &memNet{conns: make(map[netip.AddrPort]*memConn)} }

func (n *memNet) listen(t testing.TB, addr string) *memConn {
	t.Helper()
	a := netip.MustParseAddrPort(addr)
	m := &memConn{n: n, addr: a, changed: make(chan struct{})}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns[a] != nil {
		t.Fatalf("memNet: %v in use", a)
	}
	n.conns[a] = m
	return m
}

// inject delivers b to to as if from had sent it: a forged source.
func (n *memNet) inject(from, to netip.AddrPort, b []byte) {
	n.mu.Lock()
	dst := n.conns[to]
	n.mu.Unlock()
	if dst != nil {
		dst.enqueue(from, bytes.Clone(b))
	}
}

func (m *memConn) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *memConn) enqueue(from netip.AddrPort, b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	if len(m.q) >= memQueueLen {
		m.dropped++
		return
	}
	m.q = append(m.q, memDatagram{from, b})
	m.received++
	m.notifyLocked()
}

func (m *memConn) ReadFrom(b []byte) (int, net.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		if m.closed {
			return 0, nil, &net.OpError{Op: "read", Net: "udp", Source: m.LocalAddr(), Err: net.ErrClosed}
		}
		if len(m.q) > 0 {
			d := m.q[0]
			m.q[0] = memDatagram{}
			m.q = m.q[1:]
			m.idle = false
			m.notifyLocked()
			return copy(b, d.b), net.UDPAddrFromAddrPort(d.from), nil
		}
		if !m.idle {
			m.idle = true
			m.notifyLocked()
		}
		ch := m.changed
		m.mu.Unlock()
		<-ch
		m.mu.Lock()
	}
}

func (m *memConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: net.InvalidAddrError("not a *net.UDPAddr")}
	}
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: net.ErrClosed}
	}
	to := normAddr(ua.AddrPort())
	m.n.mu.Lock()
	dst, tap, drop := m.n.conns[to], m.n.tap, m.n.drop
	m.n.mu.Unlock()
	if tap != nil {
		tap(m.addr, to, b)
	}
	if drop != nil && drop(m.addr, to, b) {
		return len(b), nil
	}
	if dst != nil {
		dst.enqueue(m.addr, bytes.Clone(b))
	}
	return len(b), nil
}

func (m *memConn) Close() error {
	m.n.mu.Lock()
	if m.n.conns[m.addr] == m {
		delete(m.n.conns, m.addr)
	}
	m.n.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return &net.OpError{Op: "close", Net: "udp", Err: net.ErrClosed}
	}
	m.closed = true
	m.q = nil
	m.notifyLocked()
	return nil
}

func (m *memConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(m.addr) }

// The Conn keeps its own deadlines and never sets the PacketConn's.
func (m *memConn) SetDeadline(time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(time.Time) error { return nil }

// quiesce waits until every datagram queued at m has been read and its
// reader is back waiting for more: the Conn over m has handled them all.
func (m *memConn) quiesce(t testing.TB) {
	t.Helper()
	timeout := time.After(waitLong)
	for {
		m.mu.Lock()
		done := m.closed || (len(m.q) == 0 && m.idle)
		ch := m.changed
		m.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("memConn %v: reader not idle after %v", m.addr, waitLong)
		}
	}
}

// settle waits until the endpoints have handled everything sent to them,
// including what they sent each other in answer.
func settle(t testing.TB, ms ...*memConn) {
	t.Helper()
	count := func() (n int) {
		for _, m := range ms {
			m.mu.Lock()
			n += m.received
			m.mu.Unlock()
		}
		return n
	}
	for range 100 {
		before := count()
		for _, m := range ms {
			m.quiesce(t)
		}
		if count() == before {
			return
		}
	}
	t.Fatal("memNet: traffic did not settle after 100 rounds")
}

func TestWrapInMemory(t *testing.T) {
	parallel(t)
	n := newMemNet()
	ma, mb := n.listen(t, "10.0.0.1:1000"), n.listen(t, "10.0.0.2:2000")
	cfg := &Config{MTU: 1500}
	a, b := wrapT(t, ma, cfg), wrapT(t, mb, cfg)
	if _, err := a.WriteToUDPAddrPort([]byte("over memory"), mb.addr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "over memory", ma.addr)
	handshakeT(t, b, ma.addr)
	if _, err := b.WriteTo([]byte("and back"), ma.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "and back", mb.addr)
	if a.MaxPayload() < 1280 {
		t.Errorf("MaxPayload %d", a.MaxPayload())
	}
	if sa, sb := exchange(t, a, b, flowOpts{count: 2000, window: 32, maxSize: a.MaxPayload()}); sa != 2000 || sb != 2000 {
		t.Errorf("sent %d and %d", sa, sb)
	}
	checkClean(t, "a", a)
	checkClean(t, "b", b)
	if err := a.Rebind("10.0.0.1:1001"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Rebind of a wrapped Conn: %v, want ErrInvalidConfig", err)
	}
	// The Conn owns the PacketConn: Close closes it.
	a.Close()
	if err := ma.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the wrapped PacketConn is still open after Close: %v", err)
	}
}
