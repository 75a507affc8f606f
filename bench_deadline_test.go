package vaultudp

import (
	"net"
	"testing"
	"time"
)

// deadlineEndpoint is what BenchmarkDeadlineReadWrite needs of a socket;
// both *net.UDPConn and *Conn have it.
type deadlineEndpoint interface {
	benchEndpoint
	ReadFrom([]byte) (int, net.Addr, error)
	WriteTo([]byte, net.Addr) (int, error)
	SetWriteDeadline(time.Time) error
	SetDeadline(time.Time) error
}

// BenchmarkDeadlineReadWrite: what a server such as miekg/dns does per
// datagram, SetReadDeadline then a read, with the write that brought the
// datagram, on one goroutine (no hand-off to measure). Raw *net.UDPConn
// beside vaultudp, through the zero-allocation AddrPort methods and
// through net.PacketConn's ReadFrom/WriteTo.
func BenchmarkDeadlineReadWrite(b *testing.B) {
	pairs := []struct {
		name string
		new  func(b *testing.B) (deadlineEndpoint, deadlineEndpoint)
	}{
		{"raw", func(b *testing.B) (deadlineEndpoint, deadlineEndpoint) {
			x, y := benchRawPair(b)
			return x.(*net.UDPConn), y.(*net.UDPConn)
		}},
		{"vaultudp", func(b *testing.B) (deadlineEndpoint, deadlineEndpoint) {
			return benchVaultPair(b, func() *Config { return nil })
		}},
	}
	for _, api := range []string{"addrport", "addr"} {
		for _, p := range pairs {
			b.Run(p.name+"/"+api, func(b *testing.B) {
				x, y := p.new(b)
				to := y.LocalAddr().(*net.UDPAddr)
				toAP := to.AddrPort()
				msg, buf := make([]byte, 64), make([]byte, 2048)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if err := y.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
						b.Fatal(err)
					}
					var err error
					if api == "addrport" {
						if _, err = x.WriteToUDPAddrPort(msg, toAP); err == nil {
							_, _, err = y.ReadFromUDPAddrPort(buf)
						}
					} else {
						if _, err = x.WriteTo(msg, to); err == nil {
							_, _, err = y.ReadFrom(buf)
						}
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSetDeadline: the deadline setters alone, a deadline in the
// future moved on every call, raw *net.UDPConn beside vaultudp.
func BenchmarkSetDeadline(b *testing.B) {
	pairs := []struct {
		name string
		new  func(b *testing.B) deadlineEndpoint
	}{
		{"raw", func(b *testing.B) deadlineEndpoint { x, _ := benchRawPair(b); return x.(*net.UDPConn) }},
		{"vaultudp", func(b *testing.B) deadlineEndpoint {
			x, _ := benchVaultPair(b, func() *Config { return nil })
			return x
		}},
	}
	for _, p := range pairs {
		for _, set := range []string{"SetReadDeadline", "SetWriteDeadline", "SetDeadline"} {
			b.Run(p.name+"/"+set, func(b *testing.B) {
				x := p.new(b)
				f := map[string]func(time.Time) error{
					"SetReadDeadline": x.SetReadDeadline, "SetWriteDeadline": x.SetWriteDeadline, "SetDeadline": x.SetDeadline,
				}[set]
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if err := f(time.Now().Add(5 * time.Second)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
