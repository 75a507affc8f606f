package vaultudp

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// The benchmarks here run raw UDP and vaultudp side by side in the same
// run, so that the ratio means something on a noisy machine. Reproduce
// with the command in BENCHMARKS.md.

// benchEndpoint is what the throughput benchmarks need of a socket; both
// *net.UDPConn and *Conn have it.
type benchEndpoint interface {
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	SetReadDeadline(time.Time) error
	LocalAddr() net.Addr
	Close() error
}

func benchRawPair(b *testing.B) (benchEndpoint, benchEndpoint) {
	b.Helper()
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	x, err := net.ListenUDP("udp4", lo)
	if err != nil {
		b.Fatal(err)
	}
	y, err := net.ListenUDP("udp4", lo)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { x.Close(); y.Close() })
	// The same buffers as Listen asks for, so that the comparison is fair.
	setSocketBuffers(x)
	setSocketBuffers(y)
	return x, y
}

func benchVaultPair(b *testing.B, cfg func() *Config) (*Conn, *Conn) {
	b.Helper()
	x, err := Listen("udp4", "127.0.0.1:0", cfg())
	if err != nil {
		b.Fatal(err)
	}
	y, err := Listen("udp4", "127.0.0.1:0", cfg())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { x.Close(); y.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Handshake(ctx, addrOf(y)); err != nil {
		b.Fatal(err)
	}
	return x, y
}

// randomPayload returns size incompressible bytes: what applications send
// is mostly compressed or encrypted already, and zeros would let PadNone
// and PadBlock compress every datagram to almost nothing.
func randomPayload(size int) []byte {
	b := make([]byte, size)
	rand.Read(b)
	return b
}

// throughput sends b.N datagrams of size bytes from x to y as fast as the
// sender goes, with one receiver goroutine, and reports delivered
// datagrams per second, MB/s and loss (windowed, with no window).
func throughput(b *testing.B, x, y benchEndpoint, size int) {
	windowed(b, y, []benchEndpoint{x}, size, 0)
}

// BenchmarkThroughput: WriteTo/ReadFrom, one sender and one receiver
// goroutine, raw *net.UDPConn beside vaultudp with the default Config.
func BenchmarkThroughput(b *testing.B) {
	for _, size := range []int{64, 512, 1200} {
		b.Run(fmt.Sprintf("raw/%dB", size), func(b *testing.B) {
			x, y := benchRawPair(b)
			throughput(b, x, y, size)
		})
		b.Run(fmt.Sprintf("vaultudp/%dB", size), func(b *testing.B) {
			x, y := benchVaultPair(b, func() *Config { return nil })
			throughput(b, x, y, size)
		})
	}
}

// BenchmarkStream: one writer and one reader goroutine, as in
// BenchmarkThroughput, but flow-controlled as a stream over UDP is (QUIC,
// KCP): at most streamWindow datagrams in flight (see windowed). Without
// it, a writer faster than its reader only measures how much the
// receiver's socket buffer drops; with it, recv/s is what the pair
// carries with (next to) no loss. Raw beside vaultudp, each with the same
// window.
func BenchmarkStream(b *testing.B) {
	for _, size := range []int{64, 512, 1200} {
		b.Run(fmt.Sprintf("raw/%dB", size), func(b *testing.B) {
			x, y := benchRawPair(b)
			windowed(b, y, []benchEndpoint{x}, size, streamWindow)
		})
		b.Run(fmt.Sprintf("vaultudp/%dB", size), func(b *testing.B) {
			x, y := benchVaultPair(b, func() *Config { return nil })
			windowed(b, y, []benchEndpoint{x}, size, streamWindow)
		})
	}
}

// streamWindow is BenchmarkStream's window: what a receiver's 4 MiB
// socket buffer holds with room to spare.
const streamWindow = 1024

// BenchmarkPadding: each padding mode at every size, raw beside them in
// the same run, flow-controlled as BenchmarkStream (unpaced, the loss in
// the receiver's socket buffer would hide what each mode costs). The
// 64-byte sub-benchmarks keep their old names (mtu, block(64), none).
func BenchmarkPadding(b *testing.B) {
	for _, size := range []int{64, 512, 1200} {
		b.Run(fmt.Sprintf("raw/%dB", size), func(b *testing.B) {
			x, y := benchRawPair(b)
			windowed(b, y, []benchEndpoint{x}, size, streamWindow)
		})
		for _, pad := range []Padding{PadMTU, PadBlock(64), PadNone} {
			name := pad.String()
			if size != 64 {
				name += fmt.Sprintf("/%dB", size)
			}
			b.Run(name, func(b *testing.B) {
				x, y := benchVaultPair(b, func() *Config { return &Config{Padding: pad} })
				windowed(b, y, []benchEndpoint{x}, size, streamWindow)
			})
		}
	}
}

// BenchmarkPingPong: a 64-byte round trip, raw beside vaultudp.
func BenchmarkPingPong(b *testing.B) {
	run := func(b *testing.B, x, y benchEndpoint) {
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := y.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				y.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
		to := y.LocalAddr().(*net.UDPAddr).AddrPort()
		msg, buf := randomPayload(64), make([]byte, 2048)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := x.WriteToUDPAddrPort(msg, to); err != nil {
				b.Fatal(err)
			}
			if _, _, err := x.ReadFromUDPAddrPort(buf); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/rtt")
	}
	b.Run("raw", func(b *testing.B) {
		x, y := benchRawPair(b)
		run(b, x, y)
	})
	b.Run("vaultudp", func(b *testing.B) {
		x, y := benchVaultPair(b, func() *Config { return nil })
		run(b, x, y)
	})
	b.Run("vaultudp-padnone", func(b *testing.B) {
		x, y := benchVaultPair(b, func() *Config { return &Config{Padding: PadNone} })
		run(b, x, y)
	})
}

// BenchmarkPeerMemory: heap per peer with a live session, 10,000 peers.
// Sessions are installed directly (no sockets per peer), so this is the
// Conn's own state: peer, sessions, index maps.
func BenchmarkPeerMemory(b *testing.B) {
	const peers = 10000
	for range b.N {
		c, err := Listen("udp4", "127.0.0.1:0", &Config{MaxPeers: peers})
		if err != nil {
			b.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range peers {
			addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 9)
			p, err := c.peerFor(addr, originWrite)
			if err != nil {
				b.Fatal(err)
			}
			keys := &sessionKeys{initiator: true, version: ProtocolVersion}
			keys.localIndex = c.index.reserve()
			s, err := newSession(keys, c.now())
			if err != nil {
				b.Fatal(err)
			}
			c.install(p, s, make([]byte, 32), time.Now(), nil)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/peers, "bytes/peer")
		c.Close()
	}
}

// batchThroughput sends b.N datagrams in batches of 64 with send and
// receives with recv (both return how many they handled), one sender and
// one receiver goroutine, and reports delivered datagrams per second. With
// a window, at most that many datagrams are in flight (a credit each,
// returned as the receiver gets them, topped up when it has made no
// progress for 10 ms), as in windowed.
func batchThroughput(b *testing.B, size, window int, send func(n int) error, recv func() (int, error), setDeadline func(time.Time)) {
	var got atomic.Int64
	var last atomic.Int64
	done := make(chan struct{})
	cr := newBenchCredits(window, &got)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	go func() {
		defer close(done)
		for {
			n, err := recv()
			if err != nil {
				return
			}
			got.Add(int64(n))
			last.Store(int64(time.Since(start)))
			cr.give(n)
		}
	}()
	for sent := 0; sent < b.N; {
		n := min(64, b.N-sent)
		cr.take(n)
		if err := send(n); err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	cr.stop()
	setDeadline(time.Now().Add(200 * time.Millisecond))
	<-done
	b.StopTimer()
	setDeadline(time.Time{})
	n := got.Load()
	if elapsed := time.Duration(last.Load()); elapsed > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "recv/s")
	}
	b.ReportMetric(100*float64(int64(b.N)-n)/float64(b.N), "loss%")
}

// BenchmarkBatch: (*Conn).WriteBatch/ReadBatch beside raw
// golang.org/x/net/ipv4 batches (sendmmsg/recvmmsg), 1200-byte datagrams,
// and beside raw per-datagram WriteTo (the usual way to send UDP).
// vaultudp's WriteBatch uses UDP GSO where the kernel has it. Each runs
// unpaced, and flow-controlled (-window: streamWindow datagrams in flight,
// see batchThroughput).
func BenchmarkBatch(b *testing.B) {
	const size = 1200
	for _, window := range []int{0, streamWindow} {
		name := ""
		if window > 0 {
			name = "-window"
		}
		b.Run("raw-writeto"+name+"/1200B", func(b *testing.B) {
			x, y := benchRawPair(b)
			to := y.LocalAddr().(*net.UDPAddr).AddrPort()
			msg, buf := make([]byte, size), make([]byte, 2048)
			batchThroughput(b, size, window, func(n int) error {
				for range n {
					if _, err := x.WriteToUDPAddrPort(msg, to); err != nil {
						return err
					}
				}
				return nil
			}, func() (int, error) {
				_, _, err := y.ReadFromUDPAddrPort(buf)
				return 1, err
			}, func(t time.Time) { y.SetReadDeadline(t) })
		})
		b.Run("raw-mmsg"+name+"/1200B", func(b *testing.B) {
			x, y := benchRawPair(b)
			px, py := ipv4.NewPacketConn(x.(*net.UDPConn)), ipv4.NewPacketConn(y.(*net.UDPConn))
			out, in := make([]ipv4.Message, 64), make([]ipv4.Message, 64)
			for i := range out {
				out[i] = ipv4.Message{Buffers: [][]byte{make([]byte, size)}, Addr: y.LocalAddr()}
				in[i] = ipv4.Message{Buffers: [][]byte{make([]byte, 2048)}}
			}
			batchThroughput(b, size, window, func(n int) error {
				for sent := 0; sent < n; {
					k, err := px.WriteBatch(out[sent:n], 0)
					if err != nil {
						return err
					}
					sent += k
				}
				return nil
			}, func() (int, error) {
				return py.ReadBatch(in, 0)
			}, func(t time.Time) { y.SetReadDeadline(t) })
		})
		b.Run("vaultudp"+name+"/1200B", func(b *testing.B) {
			x, y := benchVaultPair(b, func() *Config { return &Config{ReadQueue: 4096} })
			out, in := make([]Message, 64), make([]Message, 64)
			for i := range out {
				out[i] = Message{Buf: make([]byte, size), Addr: addrOf(y)}
				in[i].Buf = make([]byte, 2048)
			}
			batchThroughput(b, size, window, func(n int) error {
				_, err := x.WriteBatch(out[:n])
				return err
			}, func() (int, error) {
				return y.ReadBatch(in)
			}, func(t time.Time) { y.SetReadDeadline(t) })
		})
	}
}

// BenchmarkFirstDatagram: nothing → the first datagram delivered, one op
// each: two sockets, (for vaultudp) AddPeer, which starts the handshake,
// one write at once (queued until the handshake completes) and the
// receiver's first read. nobody-reading: neither end reads before the
// datagram is written, so the Conns' background readers answer the
// handshake; reader-waiting: both ends have a goroutine blocked in
// ReadFromUDPAddrPort from right after Listen, as a serving program has.
// Closing the sockets is not timed.
func BenchmarkFirstDatagram(b *testing.B) {
	msg := make([]byte, 64)
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 2048)
		for range b.N {
			x, y := benchRawPairNoCleanup(b)
			if _, err := x.WriteToUDPAddrPort(msg, y.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
				b.Fatal(err)
			}
			y.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, _, err := y.ReadFromUDPAddrPort(buf); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			x.Close()
			y.Close()
			b.StartTimer()
		}
	})
	for _, ready := range []bool{false, true} {
		name := map[bool]string{false: "vaultudp/nobody-reading", true: "vaultudp/reader-waiting"}[ready]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				firstDatagram(b, msg, ready)
			}
		})
	}
}

func benchRawPairNoCleanup(b *testing.B) (*net.UDPConn, *net.UDPConn) {
	b.Helper()
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	x, err := net.ListenUDP("udp4", lo)
	if err != nil {
		b.Fatal(err)
	}
	y, err := net.ListenUDP("udp4", lo)
	if err != nil {
		x.Close()
		b.Fatal(err)
	}
	setSocketBuffers(x)
	setSocketBuffers(y)
	return x, y
}

// firstDatagram is one op of BenchmarkFirstDatagram for vaultudp.
func firstDatagram(b *testing.B, msg []byte, ready bool) {
	x, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		b.Fatal(err)
	}
	y, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		x.Close()
		b.Fatal(err)
	}
	defer func() {
		b.StopTimer()
		x.Close()
		y.Close()
		b.StartTimer()
	}()
	y.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make(chan error, 1)
	if ready {
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := x.ReadFromUDPAddrPort(buf); err != nil {
					return
				}
			}
		}()
		go func() {
			buf := make([]byte, 2048)
			_, _, err := y.ReadFromUDPAddrPort(buf)
			got <- err
		}()
	}
	to := addrOf(y)
	if err := x.AddPeer(PeerConfig{Addr: to}); err != nil {
		b.Fatal(err)
	}
	if _, err := x.WriteToUDPAddrPort(msg, to); err != nil {
		b.Fatal(err)
	}
	if !ready {
		buf := make([]byte, 2048)
		_, _, err := y.ReadFromUDPAddrPort(buf)
		got <- err
	}
	if err := <-got; err != nil {
		b.Fatal(err)
	}
}

// benchCredits bounds the datagrams in flight: a credit each, taken by
// the sender, given back by the receiver, and topped up when the receiver
// has made no progress (got unchanged) for 10 ms, for credits lost with
// lost datagrams. A window of 0 bounds nothing.
type benchCredits struct {
	ch         chan struct{}
	quit, done chan struct{}
}

func newBenchCredits(window int, got *atomic.Int64) *benchCredits {
	if window <= 0 {
		return nil
	}
	c := &benchCredits{ch: make(chan struct{}, window), quit: make(chan struct{}), done: make(chan struct{})}
	c.give(window)
	go func() {
		defer close(c.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		seen := int64(-1)
		for {
			select {
			case <-c.quit:
				return
			case <-t.C:
			}
			if g := got.Load(); g != seen {
				seen = g
				continue
			}
			c.give(window)
		}
	}()
	return c
}

// take waits for n credits.
func (c *benchCredits) take(n int) {
	if c == nil {
		return
	}
	for range n {
		<-c.ch
	}
}

// give returns up to n credits, as many as the window has room for.
func (c *benchCredits) give(n int) {
	if c == nil {
		return
	}
	for range n {
		select {
		case c.ch <- struct{}{}:
		default:
			return
		}
	}
}

// stop ends the top-ups.
func (c *benchCredits) stop() {
	if c == nil {
		return
	}
	close(c.quit)
	<-c.done
}

// windowed sends b.N incompressible datagrams of size bytes from the
// clients (one sender goroutine each) to server, with at most window of
// them in flight (none: unpaced): a credit per datagram, returned when the
// reader gets one, as a flow-controlled stream has. Credits lost with a
// lost datagram are topped up when the reader has made no progress for
// 10 ms. It reports recv/s (what the reader got per second, first send to
// last receive), MB/s, loss% (what never arrived) and, for a vaultudp
// server, queuefull% (the part of the loss in its read queue; the rest
// was the kernel's socket buffer).
func windowed(b *testing.B, server benchEndpoint, clients []benchEndpoint, size, window int) {
	peers := len(clients)
	to := server.LocalAddr().(*net.UDPAddr).AddrPort()
	var got, last atomic.Int64
	done := make(chan struct{})
	cr := newBenchCredits(window, &got)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if _, _, err := server.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			got.Add(1)
			last.Store(int64(time.Since(start)))
			cr.give(1)
		}
	}()
	errs := make(chan error, peers)
	for i, c := range clients {
		n := b.N / peers
		if i < b.N%peers {
			n++
		}
		go func() {
			msg := randomPayload(size) // zeros would let PadNone and PadBlock compress
			for range n {
				cr.take(1)
				if _, err := c.WriteToUDPAddrPort(msg, to); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			b.Error(err)
		}
	}
	cr.stop()
	server.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	<-done
	b.StopTimer()
	server.SetReadDeadline(time.Time{})
	n := got.Load()
	if elapsed := time.Duration(last.Load()); elapsed > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "recv/s")
		b.ReportMetric(float64(n)*float64(size)/1e6/elapsed.Seconds(), "MB/s")
	}
	b.ReportMetric(100*float64(int64(b.N)-n)/float64(b.N), "loss%")
	if c, ok := server.(*Conn); ok {
		b.ReportMetric(100*float64(c.Stats().Drops.QueueFull)/float64(b.N), "queuefull%")
	}
}

// BenchmarkManyPeers: one receiving socket, 64 client sockets each with
// its own sender goroutine (b.N datagrams in all, 512 bytes), one reader
// goroutine on the receiver; raw beside a vaultudp server Conn with 64
// client Conns (each with its own session). The senders share a window of
// 256 datagrams in flight (a credit per datagram, returned when the reader
// gets one), so that 64 senders measure the receive path rather than
// starving the one reader and overflowing its socket; credits lost with a
// lost datagram are topped up when the reader has made no progress for
// 10 ms. recv/s is what the reader got per second, loss% what never
// arrived. Run it with -cpu 1,2 to see how the receive path scales.
func BenchmarkManyPeers(b *testing.B) {
	const peers, size, window = 64, 512, 256
	run := func(b *testing.B, server benchEndpoint, clients []benchEndpoint) {
		windowed(b, server, clients, size, window)
	}
	b.Run("raw", func(b *testing.B) {
		lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		server, err := net.ListenUDP("udp4", lo)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { server.Close() })
		setSocketBuffers(server)
		var clients []benchEndpoint
		for range peers {
			c, err := net.ListenUDP("udp4", lo)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			setSocketBuffers(c)
			clients = append(clients, c)
		}
		run(b, server, clients)
	})
	b.Run("vaultudp", func(b *testing.B) {
		server, err := Listen("udp4", "127.0.0.1:0", nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { server.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var clients []benchEndpoint
		for range peers {
			c, err := Listen("udp4", "127.0.0.1:0", nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			if err := c.Handshake(ctx, addrOf(server)); err != nil {
				b.Fatal(err)
			}
			clients = append(clients, c)
		}
		run(b, server, clients)
	})
}
