//go:build !vaultudp_portable

package udpio

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// hasIPv6Loopback reports whether ::1 can be bound.
func hasIPv6Loopback() bool {
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// reply reads one datagram on s, checks the local address it came to,
// answers it from there, and returns where the answer came from as the
// client saw it.
func replyFromLocal(t *testing.T, s Socket, client *net.UDPConn, serverAt netip.AddrPort, src func(local netip.Addr) netip.Addr, wantLocal netip.Addr) netip.AddrPort {
	t.Helper()
	if _, err := client.WriteToUDPAddrPort([]byte("ping"), serverAt); err != nil {
		t.Fatal(err)
	}
	ms := readAll(t, s, s.NewReader(), 1)
	if ms[0].Local != wantLocal {
		t.Fatalf("datagram to %v: Local %v, want %v", serverAt, ms[0].Local, wantLocal)
	}
	if err := s.WriteTo([]byte("pong"), ms[0].Addr, src(ms[0].Local)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := client.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}
	return netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// On a socket bound to a wildcard address each datagram carries the
// local address it was sent to, and an answer given that source leaves
// from it: a client that wrote to 127.0.0.2 hears from 127.0.0.2, not
// from the 127.0.0.1 the routing would choose. (On Linux all of
// 127.0.0.0/8 is loopback.)
func TestPacketInfoAnswersFromTheAddressAsked(t *testing.T) {
	lo2 := netip.MustParseAddr("127.0.0.2")
	lo6 := netip.MustParseAddr("::1")
	type tc struct {
		name, network, bind string
		clientNet, client   string
		to                  netip.Addr
	}
	cases := []tc{
		{"udp4 0.0.0.0", "udp4", "0.0.0.0:0", "udp4", "127.0.0.1:0", lo2},
		{"dual-stack [::] from IPv4", "udp", "[::]:0", "udp4", "127.0.0.1:0", lo2},
	}
	if hasIPv6Loopback() {
		cases = append(cases,
			tc{"udp6 [::]", "udp6", "[::]:0", "udp6", "[::1]:0", lo6},
			tc{"dual-stack [::] from IPv6", "udp", "[::]:0", "udp6", "[::1]:0", lo6})
	} else {
		t.Log("no IPv6 loopback (::1 cannot be bound): the IPv6 cases are skipped")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := New(listen(t, c.network, c.bind))
			if !s.Caps().PacketInfo {
				t.Fatalf("Caps %+v on %s %s: want PacketInfo", s.Caps(), c.network, c.bind)
			}
			client := listen(t, c.clientNet, c.client)
			at := netip.AddrPortFrom(c.to, AddrPortOf(s.LocalAddr()).Port())
			if from := replyFromLocal(t, s, client, at, func(l netip.Addr) netip.Addr { return l }, c.to); from != at {
				t.Errorf("answer with the source came from %v, want %v", from, at)
			}
			if c.to == lo2 {
				// Without it the routing chooses 127.0.0.1: what the
				// source above changed.
				if from := replyFromLocal(t, s, client, at, func(netip.Addr) netip.Addr { return netip.Addr{} }, c.to); from.Addr() != netip.MustParseAddr("127.0.0.1") {
					t.Errorf("answer without a source came from %v, want 127.0.0.1", from)
				}
				// A source that is no local address is refused by the
				// kernel: the datagram still goes, from its choice.
				bogus := netip.MustParseAddr("192.0.2.1")
				if from := replyFromLocal(t, s, client, at, func(netip.Addr) netip.Addr { return bogus }, c.to); from.Addr() != netip.MustParseAddr("127.0.0.1") {
					t.Errorf("answer from a refused source came from %v, want 127.0.0.1", from)
				}
			}
			// A GSO train leaves from the source too.
			if _, err := client.WriteToUDPAddrPort([]byte("ping"), at); err != nil {
				t.Fatal(err)
			}
			ms := readAll(t, s, s.NewReader(), 1)
			if n, err := s.WriteSegments(train(100, 50), 50, ms[0].Addr, ms[0].Local); n != 100 || err != nil {
				t.Fatalf("WriteSegments = %d, %v", n, err)
			}
			buf := make([]byte, 2048)
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			for i := 0; i < 100; i++ {
				_, from, err := client.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("train datagram %d: %v", i, err)
				}
				if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != at {
					t.Fatalf("train datagram %d came from %v, want %v", i, from, at)
				}
			}
		})
	}
}

// A socket bound to one address has no packet info and ignores sources:
// it always sends from its address.
func TestPacketInfoOnlyOnWildcard(t *testing.T) {
	s := New(listen(t, "udp4", "127.0.0.1:0"))
	if s.Caps().PacketInfo {
		t.Fatalf("Caps %+v on 127.0.0.1: want no PacketInfo", s.Caps())
	}
	client := listen(t, "udp4", "127.0.0.1:0")
	at := AddrPortOf(s.LocalAddr())
	if from := replyFromLocal(t, s, client, at, func(netip.Addr) netip.Addr { return netip.MustParseAddr("127.0.0.2") }, netip.Addr{}); from != at {
		t.Errorf("answer came from %v, want %v", from, at)
	}
}

// parseControl takes what it understands and ignores the rest, also
// malformed control data.
func TestParseControl(t *testing.T) {
	if got, _ := parseControl(nil); got.IsValid() {
		t.Errorf("nil: %v", got)
	}
	if got, _ := parseControl([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9}); got.IsValid() {
		t.Errorf("garbage: %v", got)
	}
	s := &udpSocket{caps: Caps{PacketInfo: true}}
	var ob oobBuf
	ctl := s.sourceControl(ob.bytes(), netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddr("127.0.0.9"))
	if got, _ := parseControl(ctl); got != netip.MustParseAddr("127.0.0.9") {
		t.Errorf("IP_PKTINFO: %v", got)
	}
	ctl = s.sourceControl(ob.bytes(), netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddr("fe80::9"))
	if got, _ := parseControl(ctl); got != netip.MustParseAddr("fe80::9") {
		t.Errorf("IPV6_PKTINFO: %v", got)
	}
	for i := range len(ctl) {
		parseControl(ctl[:i]) // cut anywhere: no panic
	}
	// A source of the other family than the destination is not used.
	if ctl := s.sourceControl(ob.bytes(), netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddr("127.0.0.9")); len(ctl) != 0 {
		t.Errorf("IPv4 source for an IPv6 destination: %d bytes of control", len(ctl))
	}
}
