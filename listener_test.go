package vaultudp

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"
)

// TestListenerAccept: a server written one connection at a time. Each of
// three clients that Dials and writes gets a net.Conn of its own from
// Accept, with its first datagram in it; the server echoes on it; Peer
// tells the client's key and the counters; a net.Conn closed by the server
// is accepted anew when its client writes again.
func TestListenerAccept(t *testing.T) {
	parallel(t)
	l, err := ListenConns("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan PeerConn, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.(PeerConn)
			go func() { // echo once, then close
				buf := make([]byte, 64)
				c.SetReadDeadline(time.Now().Add(waitLong))
				n, err := c.Read(buf)
				if err == nil {
					c.Write(buf[:n])
				}
			}()
		}
	}()
	var clients []net.Conn
	for i := range 3 {
		c, err := Dial("udp4", l.Addr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		msg := []byte(fmt.Sprintf("client %d", i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(waitLong))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("client %d: echo %q, %v", i, buf[:n], err)
		}
		pc := <-accepted
		info := pc.Peer()
		// The echo is counted once its send returned, which may be
		// after the client read it: look again until it is (bounded).
		for deadline := time.Now().Add(waitLong); info.DatagramsOut == 0 && time.Now().Before(deadline); info = pc.Peer() {
			time.Sleep(time.Millisecond)
		}
		key := c.(PeerConn).Peer().PublicKey
		if info.Addr.String() != c.LocalAddr().String() || info.DatagramsIn != 1 || info.DatagramsOut != 1 || !info.Established {
			t.Fatalf("accepted conn %d: Peer %+v, want the client at %v with one datagram each way", i, info, c.LocalAddr())
		}
		if !bytes.Equal(key, l.Conn().PublicKey()) {
			t.Fatalf("client %d's Peer().PublicKey is not the server's", i)
		}
		pc.Close()
	}
	// Closed by the server: accepted anew on the next datagram.
	if _, err := clients[0].Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	select {
	case pc := <-accepted:
		if pc.RemoteAddr().String() != clients[0].LocalAddr().String() {
			t.Fatalf("accepted %v, want client 0 again", pc.RemoteAddr())
		}
	case <-time.After(waitLong):
		t.Fatal("a client whose net.Conn was closed was not accepted again")
	}
	l.Close()
	if _, ok := <-accepted; ok {
		t.Fatal("Accept after Close returned a conn")
	}
}
