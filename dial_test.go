package vaultudp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dialT dials address and closes the net.Conn when the test ends.
func dialT(t testing.TB, network, address string, cfg *Config) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	d, err := DialContext(ctx, network, address, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", address, err)
	}
	closeAtEnd(t, d)
	return d
}

// connEcho writes each message to d and checks that the same bytes come
// back.
func connEcho(t *testing.T, d net.Conn) {
	t.Helper()
	buf := make([]byte, 65536)
	for i, size := range []int{1, 0, 100, 1200, 7} {
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		if _, err := d.Write(msg); err != nil {
			t.Fatal(err)
		}
		d.SetReadDeadline(time.Now().Add(waitLong))
		n, err := d.Read(buf)
		if err != nil {
			t.Fatalf("echo of %d bytes: %v", size, err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("echo of %d bytes: got %d bytes %q", size, n, trunc(buf[:n]))
		}
	}
	d.SetReadDeadline(time.Time{})
}

func TestDialEcho(t *testing.T) {
	parallel(t)
	for _, tc := range []struct{ network, host string }{
		{"udp", "127.0.0.1"},
		{"udp4", "127.0.0.1"},
		{"udp6", "::1"},
	} {
		t.Run(tc.network+"/"+tc.host, func(t *testing.T) {
			server := listenT(t, tc.network, net.JoinHostPort(tc.host, "0"), nil)
			go echoServe(server)
			d := dialT(t, tc.network, server.LocalAddr().String(), nil)
			if got := d.RemoteAddr().String(); got != server.LocalAddr().String() {
				t.Errorf("RemoteAddr %s, want %s", got, server.LocalAddr())
			}
			la, ok := d.LocalAddr().(*net.UDPAddr)
			if !ok || la.AddrPort().Addr().Unmap().String() != tc.host || la.Port == 0 {
				t.Errorf("LocalAddr %v, want %s and a port (the route's local address)", d.LocalAddr(), tc.host)
			}
			connEcho(t, d)
			checkPacketConn(t, d, server.LocalAddr())
			if !server.HasPeer(la.AddrPort()) {
				t.Errorf("server has no peer at the dialer's LocalAddr %v", la)
			}
		})
	}
}

// checkPacketConn checks that d is a net.PacketConn as a connected
// *net.UDPConn is: ReadFrom names the peer, WriteTo is refused. d's peer
// echoes.
func checkPacketConn(t *testing.T, d net.Conn, peer net.Addr) {
	t.Helper()
	pc, ok := d.(net.PacketConn)
	if !ok {
		t.Fatalf("%T is not a net.PacketConn", d)
	}
	if _, err := pc.WriteTo([]byte("x"), peer); !errors.Is(err, net.ErrWriteToConnected) {
		t.Fatalf("WriteTo: %v, want net.ErrWriteToConnected", err)
	}
	if _, err := d.Write([]byte("via ReadFrom")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(waitLong))
	defer pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 100)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "via ReadFrom" || from.String() != peer.String() {
		t.Fatalf("ReadFrom: %q from %v, %v; want the echo from %v", buf[:n], from, err, peer)
	}
	if _, ok := from.(*net.UDPAddr); !ok {
		t.Fatalf("ReadFrom's address is a %T", from)
	}
}

// A host name is resolved; "udp" prefers its IPv4 address.
func TestDialHostName(t *testing.T) {
	parallel(t)
	if ips, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip4", "localhost"); err != nil || len(ips) == 0 {
		t.Skipf("localhost does not resolve to IPv4 here: %v", err)
	}
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	go echoServe(server)
	port := strconv.Itoa(int(addrOf(server).Port()))
	d := dialT(t, "udp", net.JoinHostPort("localhost", port), nil)
	if got, want := d.RemoteAddr().String(), "127.0.0.1:"+port; got != want {
		t.Errorf("RemoteAddr %s, want %s", got, want)
	}
	connEcho(t, d)
}

func TestDialBadArguments(t *testing.T) {
	parallel(t)
	for _, tc := range []struct{ network, address string }{
		{"tcp", "127.0.0.1:1"},
		{"udp", "127.0.0.1"},          // no port
		{"udp", "127.0.0.1:0"},        // port 0
		{"udp4", "[::1]:53"},          // family mismatch
		{"udp", "host.invalid.:53"},   // does not resolve (RFC 6761 .invalid)
		{"udp", "127.0.0.1:notaport"}, // unknown service
	} {
		_, err := Dial(tc.network, tc.address, nil)
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "dial" {
			t.Errorf("Dial(%q, %q): %v, want a *net.OpError with Op dial", tc.network, tc.address, err)
		}
	}
}

// Datagrams from other addresses are dropped: only the dialed peer's reach
// Read.
func TestDialReadsOnlyThePeer(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	go echoServe(server)
	d := dialT(t, "udp", server.LocalAddr().String(), nil)
	stranger := listenT(t, "udp4", "127.0.0.1:0", nil)
	to := d.LocalAddr().(*net.UDPAddr).AddrPort()
	handshakeT(t, stranger, to) // the dialer accepts the stranger's signed key (no VerifyPeer)
	if _, err := stranger.WriteToUDPAddrPort([]byte("stranger"), to); err != nil {
		t.Fatal(err)
	}
	// On loopback the stranger's datagram is in the dialer's socket buffer
	// before the echo below is even sent.
	connEcho(t, d)
	in := d.(*dialConn).c.Stats().DatagramsIn
	if in < 6 {
		t.Fatalf("DatagramsIn %d: the stranger's datagram did not arrive", in)
	}
	d.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 100)
	if n, err := d.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %q, %v; want the stranger's datagram dropped and a timeout", buf[:n], err)
	}
}

func TestDialDeadline(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	d := dialT(t, "udp", server.LocalAddr().String(), nil)
	d.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := d.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the deadline: %v, want a net.Error with Timeout() and os.ErrDeadlineExceeded", err)
	}
	d.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := d.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write after the deadline: %v", err)
	}
	// A cleared deadline lets the connection work again.
	go echoServe(server)
	d.SetDeadline(time.Time{})
	connEcho(t, d)
}

func TestDialCloseUnblocksRead(t *testing.T) {
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	d, err := Dial("udp", server.LocalAddr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := d.Read(make([]byte, 10))
		done <- err
	}()
	waitBlockedIn(t, "dialConn).Read")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close did not unblock Read")
	}
	if err := d.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

// The trust rules apply to the dialed peer: a key pinned in Config.Peers
// or VerifyPeer.
func TestDialTrust(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	go echoServe(server)
	at := addrOf(server)

	t.Run("pinned", func(t *testing.T) {
		d := dialT(t, "udp", at.String(), &Config{Peers: []PeerConfig{{Addr: at, PublicKey: server.PublicKey()}}})
		connEcho(t, d)
	})
	wrong := GenerateIdentity().Public().(ed25519.PublicKey)
	for name, cfg := range map[string]*Config{
		"pinned wrong": {Peers: []PeerConfig{{Addr: at, PublicKey: wrong}}},
		"VerifyPeer refuses": {VerifyPeer: func(netip.AddrPort, ed25519.PublicKey) error {
			return errors.New("not this one")
		}},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			d, err := Dial("udp", at.String(), cfg)
			if err == nil {
				d.Close()
				t.Fatal("Dial succeeded")
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "dial" || oe.Addr.String() != at.String() {
				t.Fatalf("Dial: %v, want a *net.OpError with Op dial and Addr %v", err, at)
			}
			// The refusal is reported as such, not as a timeout.
			if !errors.Is(err, ErrPeerRejected) {
				t.Fatalf("Dial: %v, want ErrPeerRejected", err)
			}
			t.Logf("after %v: %v", time.Since(start), err)
		})
	}
}

// A Plaintext peer has no handshake: Dial returns at once, and the
// datagrams go in clear.
func TestDialPlaintext(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", &Config{Policy: Plaintext})
	go echoServe(server)
	d := dialT(t, "udp", server.LocalAddr().String(), &Config{Policy: Plaintext})
	connEcho(t, d)
	if st := d.(*dialConn).c.Stats(); st.Handshakes != 0 || st.DatagramsIn != 5 {
		t.Fatalf("stats %+v: want no handshake and 5 datagrams", st)
	}
}

// DialContext returns ctx's error when ctx ends before the handshake.
func TestDialContextCanceled(t *testing.T) {
	parallel(t)
	dead := deadPort(t, "udp4", "127.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := DialContext(ctx, "udp", dead.String(), nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("DialContext with a canceled ctx: %v", err)
	}
}

// connToRead reads one datagram from c within waitLong.
func connToRead(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLong))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read from %v: %v", c.RemoteAddr(), err)
	}
	return string(buf[:n])
}

// ConnTo diverts one peer's datagrams to its net.Conn; others still reach
// ReadFrom, and each net.Conn gets only its own peer's.
func TestConnToDemux(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	srv := addrOf(server)
	var clients [3]*Conn
	for i := range clients {
		clients[i] = listenT(t, "udp4", "127.0.0.1:0", nil)
		handshakeT(t, clients[i], srv)
	}
	a, b, c := clients[0], clients[1], clients[2]
	if _, err := server.ConnTo(deadPort(t, "udp4", "127.0.0.1")); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("ConnTo a stranger: %v, want ErrUnknownPeer", err)
	}
	ca, err := server.ConnTo(addrOf(a))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := server.ConnTo(addrOf(b))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	if _, err := server.ConnTo(addrOf(a)); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("second ConnTo for one peer: %v, want ErrInvalidConfig", err)
	}
	if ca.RemoteAddr().String() != a.LocalAddr().String() {
		t.Errorf("RemoteAddr %v, want %v", ca.RemoteAddr(), a.LocalAddr())
	}

	const rounds = 20
	for i := range rounds {
		for _, cl := range []*Conn{c, b, a} {
			msg := cl.LocalAddr().String() + "#" + strconv.Itoa(i)
			if _, err := cl.WriteToUDPAddrPort([]byte(msg), srv); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range rounds {
		if got, want := connToRead(t, ca), a.LocalAddr().String()+"#"+strconv.Itoa(i); got != want {
			t.Fatalf("ConnTo(a) read %q, want %q", got, want)
		}
		if got, want := connToRead(t, cb), b.LocalAddr().String()+"#"+strconv.Itoa(i); got != want {
			t.Fatalf("ConnTo(b) read %q, want %q", got, want)
		}
		expectRead(t, server, c.LocalAddr().String()+"#"+strconv.Itoa(i), addrOf(c))
	}
	expectNothing(t, server, 20*time.Millisecond)

	// Writes go to the peer, from the server's address.
	if _, err := ca.Write([]byte("to a")); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "to a", srv)
	if _, ok := ca.(net.PacketConn); !ok {
		t.Fatalf("%T is not a net.PacketConn", ca)
	}
	if _, err := ca.(net.PacketConn).WriteTo([]byte("x"), a.LocalAddr()); !errors.Is(err, net.ErrWriteToConnected) {
		t.Fatalf("WriteTo: %v, want net.ErrWriteToConnected", err)
	}
	if _, err := a.WriteToUDPAddrPort([]byte("from a"), srv); err != nil {
		t.Fatal(err)
	}
	ca.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 100)
	if n, from, err := ca.(net.PacketConn).ReadFrom(buf); err != nil || string(buf[:n]) != "from a" || from.String() != a.LocalAddr().String() {
		t.Fatalf("ReadFrom: %q from %v, %v", buf[:n], from, err)
	}

	// Close ends the diversion, not the Conn: a's datagrams reach
	// ReadFrom again, b's still go to its net.Conn.
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ca.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := ca.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := b.WriteToUDPAddrPort([]byte("b again"), srv); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteToUDPAddrPort([]byte("a again"), srv); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "a again", addrOf(a))
	if got := connToRead(t, cb); got != "b again" {
		t.Fatalf("ConnTo(b) read %q", got)
	}
	// The peer can have a new one.
	ca2, err := server.ConnTo(addrOf(a))
	if err != nil {
		t.Fatalf("ConnTo after Close: %v", err)
	}
	ca2.Close()
}

// ConnTo refuses a ProtocolV2 peer: its datagrams take another path.
func TestConnToProtocolV2(t *testing.T) {
	parallel(t)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	at := deadPort(t, "udp4", "127.0.0.1")
	if err := c.AddPeer(PeerConfig{Addr: at, Protocol: ProtocolV2}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConnTo(at); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("ConnTo a ProtocolV2 peer: %v, want ErrInvalidConfig", err)
	}
}

func TestConnToDeadlineCloseRemove(t *testing.T) {
	server, client := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, client, addrOf(server))
	pc, err := server.ConnTo(addrOf(client))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()

	pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = pc.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the deadline: %v, want a timeout", err)
	}
	pc.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := pc.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write after the deadline: %v", err)
	}
	pc.SetDeadline(time.Time{})

	// RemovePeer ends Read with the reason.
	done := make(chan error, 1)
	go func() {
		_, err := pc.Read(make([]byte, 10))
		done <- err
	}()
	waitBlockedIn(t, "peerConn).Read")
	if err := server.RemovePeer(addrOf(client)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnknownPeer) {
			t.Fatalf("Read after RemovePeer: %v, want ErrUnknownPeer", err)
		}
	case <-time.After(waitLong):
		t.Fatal("RemovePeer did not unblock Read")
	}
	if _, err := pc.Write([]byte("x")); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("Write after RemovePeer: %v", err)
	}

	// Close unblocks Read and leaves the server open.
	if err := server.AddPeer(PeerConfig{Addr: addrOf(client)}); err != nil {
		t.Fatal(err)
	}
	pc2, err := server.ConnTo(addrOf(client))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := pc2.Read(make([]byte, 10))
		done <- err
	}()
	waitBlockedIn(t, "peerConn).Read")
	pc2.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close did not unblock Read")
	}
	handshakeT(t, server, addrOf(client))
	// The client uses the new session once it has seen it confirmed (a
	// datagram under it, here "ping"); until then it sends under the one
	// RemovePeer dropped on the server.
	if _, err := server.WriteToUDPAddrPort([]byte("ping"), addrOf(client)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, client, "ping", addrOf(server))
	if _, err := client.WriteToUDPAddrPort([]byte("still open"), addrOf(server)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, server, "still open", addrOf(client))

	// Closing the Conn ends its ConnTo net.Conns.
	pc3, err := server.ConnTo(addrOf(client))
	if err != nil {
		t.Fatal(err)
	}
	server.Close()
	if _, err := pc3.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after the Conn's Close: %v", err)
	}
	if _, err := server.ConnTo(addrOf(client)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ConnTo on a closed Conn: %v", err)
	}
}

// BenchmarkDialPingPong: 64-byte round trips from a dialed net.Conn to an
// echo server, raw UDP (net.DialUDP) beside vaultudp.Dial, and beside a
// server that reads its one client through ConnTo (whose Read reads the
// socket itself, as ReadFrom does; it had one hand-off between goroutines
// more per datagram before).
func BenchmarkDialPingPong(b *testing.B) {
	run := func(b *testing.B, d net.Conn) {
		msg, buf := make([]byte, 64), make([]byte, 2048)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := d.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := d.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/rtt")
	}
	b.Run("raw", func(b *testing.B) {
		srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer srv.Close()
		go echoServe(srv)
		d, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		run(b, d)
	})
	b.Run("vaultudp-dial", func(b *testing.B) {
		srv := listenT(b, "udp4", "127.0.0.1:0", nil)
		go echoServe(srv)
		d := dialT(b, "udp", srv.LocalAddr().String(), nil)
		run(b, d)
	})
	b.Run("vaultudp-dial-connto", func(b *testing.B) {
		srv := listenT(b, "udp4", "127.0.0.1:0", nil)
		d := dialT(b, "udp", srv.LocalAddr().String(), nil)
		pc, err := srv.ConnTo(d.LocalAddr().(*net.UDPAddr).AddrPort())
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		go func() {
			buf := make([]byte, 2048)
			for {
				n, err := pc.Read(buf)
				if err != nil {
					return
				}
				pc.Write(buf[:n])
			}
		}()
		run(b, d)
	})
}

// TestConnToWriteDeadlineFullQueue: a ConnTo Write that waits for room in
// a full send queue returns at its own write deadline, with a timeout
// error, as a *net.UDPConn write waits for a full send buffer; the Conn's
// own deadline (none) does not keep it.
func TestConnToWriteDeadlineFullQueue(t *testing.T) {
	parallel(t)
	server, client := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, server, addrOf(client))
	streaming(t, server)
	release := make(chan struct{})
	defer close(release)
	setBeforeSend(server, func() error { <-release; return nil }) // nothing leaves: the queue fills
	pc, err := server.ConnTo(addrOf(client))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	msg := make([]byte, 1000)
	for i := range 2 * sendQueueBytes / len(msg) {
		_, err := pc.Write(msg)
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write %d: %v, want a timeout", i, err)
		}
		return
	}
	t.Fatalf("%d writes, none waited for room in the queue past the deadline", 2*sendQueueBytes/len(msg))
}

// TestDialTimeoutIsNetError: a Dial whose handshake times out returns a
// *net.OpError that is a net.Error with Timeout() true, as a dial that
// times out in the net package does, and that still matches
// ErrHandshakeTimeout.
func TestDialTimeoutIsNetError(t *testing.T) {
	parallel(t)
	silent := rawUDP(t) // never answers
	_, err := Dial("udp4", silent.LocalAddr().String(), &Config{HandshakeTimeout: 200 * time.Millisecond})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, ErrHandshakeTimeout) {
		t.Fatalf("Dial to a silent address: %v (net.Error %v); want a timeout matching ErrHandshakeTimeout", err, ne != nil)
	}
	if oe, ok := err.(*net.OpError); !ok || !oe.Timeout() || oe.Op != "dial" {
		t.Fatalf("Dial's error %T %v: want a *net.OpError whose Timeout() is true", err, err)
	}
}

// TestConnToReadsSocket: a ConnTo net.Conn's Read, with no other reader,
// reads the socket itself (no hand-off from another goroutine), and while
// it does: its peer's datagrams reach it in order, another peer's reach
// the Conn's ReadFrom (which waits for them meanwhile), the Conn's read
// deadline does not end it and its own does, and the Conn's ReadFrom
// times out on the Conn's deadline alone. Run under -race.
func TestConnToReadsSocket(t *testing.T) {
	parallel(t)
	server := listenT(t, "udp4", "127.0.0.1:0", nil)
	if !server.sock.Load().Caps().Deadlines {
		t.Skip("the socket's deadlines do not interrupt a read: no direct reads")
	}
	srv := addrOf(server)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, srv)
	handshakeT(t, b, srv)
	ca, err := server.ConnTo(addrOf(a))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()

	// readOne reads one datagram of ca, on a goroutine of the test's
	// that is in the socket (not another test's reader) when it returns.
	readOne := func() <-chan string {
		got := make(chan string, 1)
		go func() {
			buf := make([]byte, 100)
			n, err := ca.Read(buf)
			if err != nil {
				got <- err.Error()
				return
			}
			got <- string(buf[:n])
		}()
		waitInSocket(t, "(*peerConn).Read", "TestConnToReadsSocket")
		return got
	}
	got := readOne()
	if _, err := a.WriteToUDPAddrPort([]byte("a0"), srv); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "a0" {
		t.Fatalf("ConnTo's Read: %q", s)
	}

	// Both read at once, each its own peer's datagrams, in order.
	const rounds = 50
	errs := make(chan error, 2)
	go func() {
		buf := make([]byte, 100)
		for i := range rounds {
			ca.SetReadDeadline(time.Now().Add(waitLong))
			n, err := ca.Read(buf)
			if want := "a#" + strconv.Itoa(i); err != nil || string(buf[:n]) != want {
				errs <- fmt.Errorf("ConnTo read %q, %v; want %q", buf[:n], err, want)
				return
			}
		}
		errs <- nil
	}()
	go func() {
		buf := make([]byte, 100)
		for i := range rounds {
			server.SetReadDeadline(time.Now().Add(waitLong))
			n, from, err := server.ReadFromUDPAddrPort(buf)
			if want := "b#" + strconv.Itoa(i); err != nil || string(buf[:n]) != want || from != addrOf(b) {
				errs <- fmt.Errorf("ReadFrom read %q from %v, %v; want %q", buf[:n], from, err, want)
				return
			}
		}
		errs <- nil
	}()
	for i := range rounds { // in lockstep with neither reader: nothing lost
		for _, cl := range []struct {
			c    *Conn
			name string
		}{{a, "a"}, {b, "b"}} {
			if _, err := cl.c.WriteToUDPAddrPort([]byte(cl.name+"#"+strconv.Itoa(i)), srv); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	// The deadlines are each reader's own.
	server.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	ca.SetReadDeadline(time.Time{})
	got = readOne()
	if _, _, err := server.ReadFromUDPAddrPort(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the Conn's ReadFrom past its deadline: %v", err)
	}
	if _, err := a.WriteToUDPAddrPort([]byte("after the Conn's deadline"), srv); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "after the Conn's deadline" {
		t.Fatalf("ConnTo's Read, the Conn's deadline passed: %q", s)
	}
	server.SetReadDeadline(time.Time{})
	got = readOne()
	ca.SetReadDeadline(time.Now().Add(-time.Second)) // moved while it reads
	if s := <-got; !strings.Contains(s, os.ErrDeadlineExceeded.Error()) {
		t.Fatalf("ConnTo's Read in the socket did not end at its own deadline: %q", s)
	}
}
