package vaultudp

import (
	"net/netip"
	"testing"
	"time"
)

// BenchmarkWildcardBind measures what answering from the peer's local
// address costs: a Conn bound to 0.0.0.0 (packet info read with every
// datagram, a source given with every send) beside one bound to
// 127.0.0.1 and raw UDP, in the same run. Each op is one 1200-byte
// datagram, written in WriteBatch rounds of 16 and read with ReadBatch
// (raw: WriteTo and ReadFrom each).
//
//	go test -run '^$' -bench BenchmarkWildcardBind -benchmem .
func BenchmarkWildcardBind(b *testing.B) {
	const size, round = 1200, 16
	b.Run("raw", func(b *testing.B) {
		x, y := benchRawPair(b)
		msg, buf := make([]byte, size), make([]byte, 2048)
		to := y.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
		y.SetReadDeadline(time.Now().Add(time.Minute))
		b.ReportAllocs()
		b.SetBytes(size)
		for i := 0; i < b.N; i += round {
			for k := 0; k < round; k++ {
				if _, err := x.WriteToUDPAddrPort(msg, to); err != nil {
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
	for _, bind := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		b.Run("vaultudp/"+bind, func(b *testing.B) {
			server := listenT(b, "udp4", bind, &Config{ReadQueue: 4096})
			client := listenT(b, "udp4", "127.0.0.1:0", &Config{ReadQueue: 4096})
			at := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), addrOf(server).Port())
			handshakeT(b, client, at)
			if _, err := client.WriteToUDPAddrPort([]byte("hello"), at); err != nil {
				b.Fatal(err)
			}
			_, clientAt := readWithin(b, server, waitLong)
			out, in := make([]Message, round), make([]Message, round)
			for k := range out {
				out[k] = Message{Buf: make([]byte, size), Addr: clientAt}
				in[k].Buf = make([]byte, 2048)
			}
			client.SetReadDeadline(time.Now().Add(time.Minute))
			b.ReportAllocs()
			b.SetBytes(size)
			for i := 0; i < b.N; i += round {
				if _, err := server.WriteBatch(out); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < round; {
					n, err := client.ReadBatch(in[got:])
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}
