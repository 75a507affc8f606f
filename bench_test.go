package vaultudp

import (
	"context"
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

// throughput sends b.N datagrams of size bytes from x to y as fast as the
// sender goes, with one receiver goroutine, and reports delivered
// datagrams per second, MB/s and loss.
func throughput(b *testing.B, x, y benchEndpoint, size int) {
	to := y.LocalAddr().(*net.UDPAddr).AddrPort()
	var got atomic.Int64
	var last atomic.Int64
	done := make(chan struct{})
	msg := make([]byte, size)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if _, _, err := y.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			got.Add(1)
			last.Store(int64(time.Since(start)))
		}
	}()
	for range b.N {
		if _, err := x.WriteToUDPAddrPort(msg, to); err != nil {
			b.Fatal(err)
		}
	}
	y.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	<-done
	b.StopTimer()
	y.SetReadDeadline(time.Time{})
	n := got.Load()
	elapsed := time.Duration(last.Load())
	if elapsed > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "recv/s")
		b.ReportMetric(float64(n)*float64(size)/1e6/elapsed.Seconds(), "MB/s")
	}
	b.ReportMetric(100*float64(int64(b.N)-n)/float64(b.N), "loss%")
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

// BenchmarkPadding: the cost of each padding mode, 64-byte datagrams.
func BenchmarkPadding(b *testing.B) {
	for _, pad := range []Padding{PadMTU, PadBlock(64), PadNone} {
		b.Run(pad.String(), func(b *testing.B) {
			x, y := benchVaultPair(b, func() *Config { return &Config{Padding: pad} })
			throughput(b, x, y, 64)
		})
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
		msg, buf := make([]byte, 64), make([]byte, 2048)
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
			c.idxMu.Lock()
			keys.localIndex = c.newIndexLocked()
			c.sessions[keys.localIndex] = nil
			c.idxMu.Unlock()
			s, err := newSession(keys, c.now())
			if err != nil {
				b.Fatal(err)
			}
			c.install(p, s, make([]byte, 32), time.Now())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/peers, "bytes/peer")
		c.Close()
	}
}

// batchThroughput sends b.N datagrams in batches of 64 with send and
// receives with recv (both return how many they handled), one sender and
// one receiver goroutine, and reports delivered datagrams per second.
func batchThroughput(b *testing.B, size int, send func(n int) error, recv func() (int, error), setDeadline func(time.Time)) {
	var got atomic.Int64
	var last atomic.Int64
	done := make(chan struct{})
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
		}
	}()
	for sent := 0; sent < b.N; {
		n := min(64, b.N-sent)
		if err := send(n); err != nil {
			b.Fatal(err)
		}
		sent += n
	}
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
// vaultudp's WriteBatch uses UDP GSO where the kernel has it.
func BenchmarkBatch(b *testing.B) {
	const size = 1200
	b.Run("raw-writeto/1200B", func(b *testing.B) {
		x, y := benchRawPair(b)
		to := y.LocalAddr().(*net.UDPAddr).AddrPort()
		msg, buf := make([]byte, size), make([]byte, 2048)
		batchThroughput(b, size, func(n int) error {
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
	b.Run("raw-mmsg/1200B", func(b *testing.B) {
		x, y := benchRawPair(b)
		px, py := ipv4.NewPacketConn(x.(*net.UDPConn)), ipv4.NewPacketConn(y.(*net.UDPConn))
		out, in := make([]ipv4.Message, 64), make([]ipv4.Message, 64)
		for i := range out {
			out[i] = ipv4.Message{Buffers: [][]byte{make([]byte, size)}, Addr: y.LocalAddr()}
			in[i] = ipv4.Message{Buffers: [][]byte{make([]byte, 2048)}}
		}
		batchThroughput(b, size, func(n int) error {
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
	b.Run("vaultudp/1200B", func(b *testing.B) {
		x, y := benchVaultPair(b, func() *Config { return &Config{ReadQueue: 4096} })
		out, in := make([]Message, 64), make([]Message, 64)
		for i := range out {
			out[i] = Message{Buf: make([]byte, size), Addr: addrOf(y)}
			in[i].Buf = make([]byte, 2048)
		}
		batchThroughput(b, size, func(n int) error {
			_, err := x.WriteBatch(out[:n])
			return err
		}, func() (int, error) {
			return y.ReadBatch(in)
		}, func(t time.Time) { y.SetReadDeadline(t) })
	})
}
