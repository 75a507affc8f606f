// Command echo is the smallest vaultudp program: a server that echoes
// every datagram back to its sender, and a client that sends one and
// checks the echo. Both ends run on loopback in this one process.
//
//	go run ./echo
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/vaultudp/vaultudp"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := run(ctx, "127.0.0.1:0", "127.0.0.1:0", "hello, vaultudp")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("echoed: %q\n", reply)
}

// run starts an echo server on serverAddr and a client on clientAddr,
// sends msg from the client and returns what came back.
func run(ctx context.Context, serverAddr, clientAddr, msg string) (string, error) {
	// The server: vaultudp.Listen instead of net.ListenPacket, and
	// nothing else changes. A nil Config takes every default.
	server, err := vaultudp.Listen("udp", serverAddr, nil)
	if err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- echo(server) }()
	defer func() {
		server.Close() // ends echo's ReadFrom with net.ErrClosed
		<-done
	}()

	client, err := vaultudp.Listen("udp", clientAddr, nil)
	if err != nil {
		return "", err
	}
	defer client.Close()

	// The first write to an address runs the key exchange by itself;
	// the datagram waits for it and then goes out sealed.
	if _, err := client.WriteTo([]byte(msg), server.LocalAddr()); err != nil {
		return "", err
	}
	if d, ok := ctx.Deadline(); ok {
		client.SetReadDeadline(d)
	}
	buf := make([]byte, client.MaxPayload())
	n, from, err := client.ReadFrom(buf)
	if err != nil {
		return "", err
	}
	if from.String() != server.LocalAddr().String() {
		return "", fmt.Errorf("reply from %v, want the server %v", from, server.LocalAddr())
	}
	return string(buf[:n]), nil
}

// echo writes every datagram back to its sender until the Conn is
// closed: the loop any *net.UDPConn echo server has.
func echo(conn net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := conn.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo(buf[:n], from); err != nil {
			return err
		}
	}
}
