//go:build !vaultudp_portable

package udpio

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkUDPIO moves 1200-byte datagrams over loopback, 64 per round
// (written, then read, by one goroutine), each way of the socket beside
// raw *net.UDPConn WriteTo/ReadFrom in the same run. ns/op and allocs/op
// are per datagram.
//
//	go test -run '^$' -bench BenchmarkUDPIO -benchmem ./internal/udpio
func BenchmarkUDPIO(b *testing.B) {
	const size, round = 1200, 64
	bufs := func() (payload []byte, ms []Message) {
		payload = make([]byte, size*round)
		ms = make([]Message, round)
		for i := range ms {
			ms[i].Buf = make([]byte, 2048)
		}
		return payload, ms
	}
	sockets := func(b *testing.B, bind string) (*net.UDPConn, *net.UDPConn) {
		x, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		if err != nil {
			b.Fatal(err)
		}
		pc, err := net.ListenPacket("udp4", bind)
		if err != nil {
			b.Fatal(err)
		}
		y := pc.(*net.UDPConn)
		b.Cleanup(func() { x.Close(); y.Close() })
		for _, c := range []*net.UDPConn{x, y} {
			c.SetReadBuffer(4 << 20)
			c.SetWriteBuffer(4 << 20)
		}
		return x, y
	}
	b.Run("raw", func(b *testing.B) {
		x, y := sockets(b, "127.0.0.1:0")
		payload, _ := bufs()
		buf := make([]byte, 2048)
		to := AddrPortOf(y.LocalAddr())
		y.SetReadDeadline(time.Now().Add(time.Minute))
		b.ReportAllocs()
		b.SetBytes(size)
		for i := 0; i < b.N; i += round {
			for k := 0; k < round; k++ {
				if _, err := x.WriteToUDPAddrPort(payload[:size], to); err != nil {
					b.Fatal(err)
				}
			}
			for k := 0; k < round; k++ {
				if _, _, err := y.ReadFromUDPAddrPort(buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	type variant struct {
		name  string
		bind  string
		gso   bool // WriteSegments (GSO where the socket has it) instead of WriteTo each
		gro   bool
		local bool // answer-side source: the reader's Local
	}
	for _, v := range []variant{
		{"WriteTo+recvmmsg", "127.0.0.1:0", false, false, false},
		{"GSO+recvmmsg", "127.0.0.1:0", true, false, false},
		{"GSO+GRO", "127.0.0.1:0", true, true, false},
		{"WriteTo+recvmmsg+pktinfo", "0.0.0.0:0", false, false, true},
	} {
		b.Run(v.name, func(b *testing.B) {
			xu, yu := sockets(b, v.bind)
			x, y := New(xu).(*udpSocket), New(yu).(*udpSocket)
			if v.gso && !x.Caps().GSO {
				b.Skip("no GSO here")
			}
			switch {
			case v.gro && !y.caps.GRO:
				b.Skip("no GRO here")
			case v.gro:
				y.enableGRO() // as a backlog would
			default:
				y.caps.GRO = false
			}
			if v.local && !y.Caps().PacketInfo {
				b.Skip("no packet info here")
			}
			payload, ms := bufs()
			to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), AddrPortOf(y.LocalAddr()).Port())
			r := y.NewReader()
			y.SetReadDeadline(time.Now().Add(time.Minute))
			b.ReportAllocs()
			b.SetBytes(size)
			for i := 0; i < b.N; i += round {
				if v.gso {
					if _, err := x.WriteSegments(payload, size, to, netip.Addr{}); err != nil {
						b.Fatal(err)
					}
				} else {
					for k := 0; k < round; k++ {
						if err := x.WriteTo(payload[k*size:(k+1)*size], to, netip.Addr{}); err != nil {
							b.Fatal(err)
						}
					}
				}
				for got := 0; got < round; {
					n, err := r.Read(ms[got:])
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}
