package vaultudp_test

import (
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
