package vaultudp_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/vaultudp/vaultudp"
)

// Listen replaces net.ListenPacket: the Conn is a net.PacketConn, and the
// first write to an address runs the key exchange by itself.
func ExampleListen() {
	server, err := vaultudp.Listen("udp", "127.0.0.1:0", nil) // nil: every default
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	client, err := vaultudp.Listen("udp", "127.0.0.1:0", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// Unchanged net.PacketConn code from here on.
	var pc net.PacketConn = client
	if _, err := pc.WriteTo([]byte("hello"), server.LocalAddr()); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 1500)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := server.ReadFrom(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s from the client: %v\n", buf[:n], from.String() == client.LocalAddr().String())
	// Output: hello from the client: true
}

// A pinned key is the strongest trust rule: the handshake fails unless the
// peer proves it holds that identity.
func ExampleConn_AddPeer() {
	serverKey := vaultudp.GenerateIdentity() // in practice: vaultudp.LoadPrivateKey("server.key")
	server, err := vaultudp.Listen("udp", "127.0.0.1:0", &vaultudp.Config{Identity: serverKey})
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	client, err := vaultudp.Listen("udp", "127.0.0.1:0", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// The public key travels out of band, as text: vaultudp.EncodePublicKey.
	pinned, err := vaultudp.ParsePublicKey(vaultudp.EncodePublicKey(server.PublicKey()))
	if err != nil {
		log.Fatal(err)
	}
	serverAddr := server.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := client.AddPeer(vaultudp.PeerConfig{Addr: serverAddr, PublicKey: pinned}); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Handshake(ctx, serverAddr); err != nil {
		log.Fatal(err)
	}
	fmt.Println("session with the pinned server:", client.Peers()[0].Established)
	// Output: session with the pinned server: true
}

// Wrap takes a socket the caller made (here a *net.UDPConn, which gets
// batch I/O; any net.PacketConn reporting *net.UDPAddr addresses works).
func ExampleWrap() {
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		log.Fatal(err)
	}
	c, err := vaultudp.Wrap(udp, &vaultudp.Config{Padding: vaultudp.PadNone})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // closes udp too
	fmt.Println(c.MaxPayload() > 1200)
	// Output: true
}

// Dial replaces net.Dial("udp", ...): the net.Conn it returns talks to one
// peer, and the handshake is done when it returns. Pinning the server's
// key is a PeerConfig for its address in Config.Peers.
func ExampleDial() {
	server, err := vaultudp.Listen("udp", "127.0.0.1:0", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	go func() { // an echo server
		buf := make([]byte, 1500)
		for {
			n, from, err := server.ReadFrom(buf)
			if err != nil {
				return
			}
			server.WriteTo(buf[:n], from)
		}
	}()

	serverAddr := server.LocalAddr().(*net.UDPAddr).AddrPort()
	conn, err := vaultudp.Dial("udp", serverAddr.String(), &vaultudp.Config{
		Peers: []vaultudp.PeerConfig{{Addr: serverAddr, PublicKey: server.PublicKey()}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// Unchanged net.Conn code from here on.
	if _, err := conn.Write([]byte("hello")); err != nil {
		log.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s back from %v\n", buf[:n], conn.RemoteAddr().String() == serverAddr.String())
	// Output: hello back from true
}

// A server written one connection at a time: each peer that writes gets
// a net.Conn of its own from Accept, as from dtls.Listen.
func ExampleListener() {
	l, err := vaultudp.ListenConns("udp", "127.0.0.1:0", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1500)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n]) // echo
				}
			}()
		}
	}()

	c, err := vaultudp.Dial("udp", l.Addr().String(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	buf := make([]byte, 1500)
	n, _ := c.Read(buf)
	server := c.(vaultudp.PeerConn).Peer() // the dialed peer: its key, its counters
	fmt.Printf("%s, from the key %v\n", buf[:n], bytes.Equal(server.PublicKey, l.Conn().PublicKey()))
	// Output: hello, from the key true
}
