package vaultudp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// pair returns two Conns on loopback that know each other as peers.
func pair(t testing.TB, network, host string, ca, cb *Config) (*Conn, *Conn) {
	t.Helper()
	if ca == nil {
		ca = &Config{}
	}
	if cb == nil {
		cb = &Config{}
	}
	a, err := Listen(network, net.JoinHostPort(host, "0"), ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := Listen(network, net.JoinHostPort(host, "0"), cb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

func addrOf(c *Conn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func readWithin(t testing.TB, c *Conn, d time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("read: %v (stats %+v)", err, c.Stats())
	}
	return buf[:n], from
}

func TestSmokeRoundTrip(t *testing.T) {
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
	_ = bytes.Equal
	_ = fmt.Sprint
	t.Logf("a: %+v", a.Stats())
	t.Logf("b: %+v", b.Stats())
}
