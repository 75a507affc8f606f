package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

// An unchanged plain UDP echo server behind two proxies: a plain client
// talks to the client-side proxy, datagrams cross sealed, and the echoes
// come back to the right client.
func TestProxyEcho(t *testing.T) {
	echo, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()

	serverKey := vaultudp.GenerateIdentity()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	serverReady := make(chan net.Addr, 1)
	go func() {
		errs <- runProxyWith(ctx, proxyConfig{
			listen:  "127.0.0.1:0",
			forward: echo.LocalAddr().(*net.UDPAddr).AddrPort(),
			vault:   func() *vaultudp.Config { return &vaultudp.Config{Identity: serverKey} },
			log:     io.Discard,
		}, serverReady)
	}()
	serverAddr := (<-serverReady).(*net.UDPAddr).AddrPort()
	clientReady := make(chan net.Addr, 1)
	go func() {
		errs <- runProxyWith(ctx, proxyConfig{
			listen: "127.0.0.1:0",
			to:     serverAddr,
			vault: func() *vaultudp.Config {
				return &vaultudp.Config{Peers: []vaultudp.PeerConfig{{
					Addr: serverAddr, PublicKey: serverKey.Public().(ed25519.PublicKey),
				}}}
			},
			log: io.Discard,
		}, clientReady)
	}()
	entry := <-clientReady
	defer func() {
		cancel()
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("proxy: %v", err)
			}
		}
	}()

	// Two plain clients, each must get its own echoes.
	for c := range 2 {
		client, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		for i := range 5 {
			msg := fmt.Sprintf("client %d datagram %d", c, i)
			if _, err := client.WriteTo([]byte(msg), entry); err != nil {
				t.Fatal(err)
			}
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 2048)
			n, from, err := client.ReadFrom(buf)
			if err != nil {
				t.Fatalf("client %d: no echo of %q: %v", c, msg, err)
			}
			if string(buf[:n]) != msg || from.String() != entry.String() {
				t.Fatalf("client %d got %q from %v, want %q from %v", c, buf[:n], from, msg, entry)
			}
		}
	}
}
