//go:build linux && !vaultudp_portable

package vaultudp

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// sourceRecorder is a PacketConn that records where each datagram it
// reads came from, and its type byte.
type sourceRecorder struct {
	net.PacketConn
	mu    sync.Mutex
	from  []netip.AddrPort
	types []byte
}

func (r *sourceRecorder) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := r.PacketConn.ReadFrom(b)
	if err == nil && n >= 2 {
		ap := a.(*net.UDPAddr).AddrPort()
		r.mu.Lock()
		r.from = append(r.from, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		r.types = append(r.types, b[1])
		r.mu.Unlock()
	}
	return n, a, err
}

// A Conn bound to a wildcard address answers a peer from the local
// address the peer's datagrams arrived at: a client that talks to it at
// 127.0.0.2 (or ::1) hears every datagram from there (the cookie reply of
// a server under load, the handshake reply, WriteTo's and WriteBatch's
// sealed datagrams, the hello of a rekey the server starts), and so its
// handshake completes (a cookie from
// another address is ignored) and its peer stays at the address it wrote
// to instead of roaming to the one the routing would choose (127.0.0.1).
func TestAnswersLeaveFromTheAddressAsked(t *testing.T) {
	for _, tc := range []struct {
		name, network, bind string
		clientNet, client   string
		target              string
	}{
		{"udp4 0.0.0.0", "udp4", "0.0.0.0:0", "udp4", "127.0.0.1:0", "127.0.0.2"},
		{"dual-stack [::] from IPv4", "udp", "[::]:0", "udp4", "127.0.0.1:0", "127.0.0.2"},
		{"udp6 [::]", "udp6", "[::]:0", "udp6", "[::1]:0", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := net.ListenPacket(tc.clientNet, tc.client)
			if err != nil {
				if tc.clientNet == "udp6" {
					t.Skipf("no IPv6 loopback, this case needs ::1: %v", err)
				}
				t.Fatal(err)
			}
			server := listenT(t, tc.network, tc.bind, nil)
			if !server.sock.Load().Caps().PacketInfo {
				t.Skipf("the socket gives no packet info here (%+v)", server.sock.Load().Caps())
			}
			// The server is under load: it answers hellos without a
			// cookie with one.
			server.cookies.mu.Lock()
			server.cookies.loadedUntil = time.Now().Add(time.Hour)
			server.cookies.mu.Unlock()
			rec := &sourceRecorder{PacketConn: pc}
			client, err := Wrap(rec, nil)
			if err != nil {
				t.Fatal(err)
			}
			closeAtEnd(t, client)
			at := netip.AddrPortFrom(netip.MustParseAddr(tc.target), addrOf(server).Port())
			clientAt := normAddr(addrOf(client))

			if _, err := client.WriteToUDPAddrPort([]byte("ping"), at); err != nil {
				t.Fatal(err)
			}
			expectRead(t, server, "ping", clientAt)
			if _, err := server.WriteToUDPAddrPort([]byte("pong"), clientAt); err != nil {
				t.Fatal(err)
			}
			expectRead(t, client, "pong", at)
			ms := make([]Message, 20)
			for i := range ms {
				ms[i] = Message{Buf: []byte("batch"), Addr: clientAt}
			}
			if n, err := server.WriteBatch(ms); n != len(ms) || err != nil {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			for range ms {
				expectRead(t, client, "batch", at)
			}
			// A rekey the server starts: its hello leaves from there too.
			sp := peerOf(server, clientAt)
			if sp == nil {
				t.Fatalf("the server has no peer at %v", clientAt)
			}
			before := server.Stats().Handshakes
			timeout := time.NewTimer(waitLong)
			defer timeout.Stop()
			for i := 0; server.Stats().Handshakes == before; i++ {
				sp.mu.Lock()
				ch := sp.changedLocked()
				sp.mu.Unlock()
				server.startHandshake(sp)
				select {
				case <-ch:
				case <-timeout.C:
					t.Fatalf("no rekey after %d waits (stats %+v)", i, server.Stats())
				}
			}
			if _, err := server.WriteToUDPAddrPort([]byte("rekeyed"), clientAt); err != nil {
				t.Fatal(err)
			}
			expectRead(t, client, "rekeyed", at)
			rec.mu.Lock()
			defer rec.mu.Unlock()
			sealed := 0
			for i, from := range rec.from {
				if rec.types[i] == typeSealed {
					sealed++
				}
				if from != at {
					t.Errorf("datagram %d (type %d) came from %v, want %v", i, rec.types[i], from, at)
				}
			}
			if sealed < 1+len(ms) {
				t.Errorf("%d sealed datagrams received, want at least %d", sealed, 1+len(ms))
			}
			if s := server.Stats(); s.CookiesSent == 0 {
				t.Errorf("the server sent no cookie (stats %+v)", s)
			}
			if peers := client.Peers(); len(peers) != 1 || peers[0].Addr != at {
				t.Errorf("client's peers: %+v; want one, still at %v", peers, at)
			}
		})
	}
}

// Sending from the recorded local address and reading the packet info
// allocate nothing per datagram either.
func TestPacketInfoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race; CI runs the Alloc tests without it")
	}
	server := listenT(t, "udp4", "0.0.0.0:0", &Config{ReadQueue: 4096})
	if !server.sock.Load().Caps().PacketInfo {
		t.Skipf("the socket gives no packet info here (%+v)", server.sock.Load().Caps())
	}
	client := listenT(t, "udp4", "127.0.0.1:0", &Config{ReadQueue: 4096})
	at := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addrOf(server).Port())
	handshakeT(t, client, at)
	msg, buf := make([]byte, 1200), make([]byte, 2048)
	if _, err := client.WriteToUDPAddrPort(msg, at); err != nil {
		t.Fatal(err)
	}
	_, clientAt := readWithin(t, server, waitLong)
	out, in := make([]Message, 16), make([]Message, 16)
	for k := range out {
		out[k] = Message{Buf: make([]byte, 1200), Addr: clientAt}
		in[k].Buf = make([]byte, 2048)
	}
	server.SetReadDeadline(time.Now().Add(waitLong))
	client.SetReadDeadline(time.Now().Add(waitLong))
	roundTrip := func() {
		if _, err := client.WriteToUDPAddrPort(msg, at); err != nil {
			t.Fatal(err)
		}
		if _, _, err := server.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := server.WriteToUDPAddrPort(msg, clientAt); err != nil {
			t.Fatal(err)
		}
		if _, from, err := client.ReadFromUDPAddrPort(buf); err != nil || from != at {
			t.Fatalf("client read from %v, %v; want %v", from, err, at)
		}
		if _, err := server.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := client.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	for range 20 { // warm the packet free lists
		roundTrip()
	}
	if allocs := testing.AllocsPerRun(50, roundTrip); allocs > 0 {
		t.Errorf("%.2f allocations per round trip over a wildcard-bound Conn, want 0", allocs)
	}
}
