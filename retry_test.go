package vaultudp

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"

	"github.com/vaultudp/vaultudp/vaulttest"
)

// slowConn delays every datagram it writes by a fixed time, as a long
// path does.
type slowConn struct {
	net.PacketConn
	delay time.Duration
}

func (s *slowConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c := append([]byte(nil), b...)
	time.AfterFunc(s.delay, func() { s.PacketConn.WriteTo(c, addr) })
	return len(b), nil
}

// A round trip longer than the retry interval still completes: the reply
// to an earlier hello is accepted after a retry, and the responder's
// session for it is confirmed although a newer hello came in meanwhile.
func TestHandshakeSlowPath(t *testing.T) {
	parallel(t)
	pa, pb := vaulttest.Pipe()
	cfg := func() *Config { return &Config{HandshakeTimeout: 3 * time.Second} } // retry every 600 ms
	a, err := Wrap(&slowConn{pa, 400 * time.Millisecond}, cfg())                // round trip 800 ms
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Wrap(&slowConn{pb, 400 * time.Millisecond}, cfg())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bAddr := pb.LocalAddr().(*net.UDPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Handshake(ctx, bAddr); err != nil {
		t.Fatalf("handshake over a slow path: %v (a %+v, b %+v)", err, a.Stats(), b.Stats())
	}
	if _, err := a.WriteToUDPAddrPort([]byte("over the slow path"), bAddr); err != nil {
		t.Fatal(err)
	}
	got, from := readWithin(t, b, 5*time.Second)
	if string(got) != "over the slow path" {
		t.Fatalf("got %q", got)
	}
	if _, err := b.WriteToUDPAddrPort([]byte("and back"), from); err != nil {
		t.Fatal(err)
	}
	if got, _ := readWithin(t, a, 5*time.Second); string(got) != "and back" {
		t.Fatalf("got %q", got)
	}
	if d := b.Stats().Drops; d.UnknownSession != 0 {
		t.Fatalf("b dropped %d datagrams under unknown sessions", d.UnknownSession)
	}
}

// The responder does not send under a session the initiator never
// confirmed: its Handshake waits, and its datagrams wait in the queue.
func TestResponderWaitsForConfirmation(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	// a confirmed at once (keepalive): b's session is established, and
	// b's datagram reaches a.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Handshake(ctx, addrOf(a)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteToUDPAddrPort([]byte("confirmed"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "confirmed", addrOf(b))
}

// A retry carries the responder's cookie forward, and the hello it
// replaces stays answerable; a cookie message counts only from the address
// the hello went to.
func TestRetryCookieRules(t *testing.T) {
	parallel(t)
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	peerAddr := deadPort(t, "udp4", "127.0.0.1")
	p, err := c.peerFor(peerAddr, originWrite)
	if err != nil {
		t.Fatal(err)
	}
	cookie := bytes.Repeat([]byte{0xc0}, cookieLen)

	hello := func() {
		p.mu.Lock()
		claimed := p.claimHelloLocked()
		p.mu.Unlock()
		if !claimed {
			t.Fatal("no hello could be claimed")
		}
		c.sendHello(p)
	}
	hello()
	p.mu.Lock()
	first := p.hs.init.localIndex
	p.mu.Unlock()

	// A cookie from another address is ignored.
	stranger := netip.AddrPortFrom(peerAddr.Addr(), peerAddr.Port()+1)
	c.handleCookie(noise.CookieMsg(first, cookie), stranger)
	p.mu.Lock()
	if !bytes.Equal(p.hs.init.cookie(), make([]byte, cookieLen)) {
		p.mu.Unlock()
		t.Fatal("a cookie from another address was taken")
	}
	p.mu.Unlock()

	// From the peer's address it is taken, and a retry keeps it.
	c.handleCookie(noise.CookieMsg(first, cookie), peerAddr)
	p.mu.Lock()
	taken := bytes.Equal(p.hs.init.cookie(), cookie)
	p.mu.Unlock()
	if !taken {
		t.Fatal("the peer's cookie was not taken")
	}
	hello()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !bytes.Equal(p.hs.init.cookie(), cookie) {
		t.Fatal("the retry dropped the cookie")
	}
	if p.hs.prevInit == nil || p.hs.prevInit.localIndex != first {
		t.Fatal("the replaced hello is not kept")
	}
	if c.index.initiator(first) != p || c.index.initiator(p.hs.init.localIndex) != p {
		t.Fatal("both hellos of the attempt must stay answerable")
	}
}
