package vaulttest_test

import (
	"fmt"
	"net/netip"

	"github.com/vaultudp/vaultudp/vaulttest"
)

// Two endpoints talk through a fault injector that drops and duplicates
// datagrams. The seed fixes which ones, so the output never changes.
func Example() {
	a, b := vaulttest.Pipe()
	defer b.Close()
	fa := vaulttest.NewFaultyConn(a, vaulttest.Faults{Drop: 0.3, Duplicate: 0.3, Seed: 1})
	defer fa.Close()

	for i := range 6 {
		fa.WriteTo(fmt.Appendf(nil, "datagram %d", i), b.LocalAddr())
	}

	// Delivery is synchronous: every datagram sent is already waiting at b.
	buf := make([]byte, 1500)
	for range fa.Counts().Sent {
		n, from, err := b.ReadFrom(buf)
		if err != nil {
			panic(err)
		}
		fmt.Printf("b got %q from %v\n", buf[:n], from)
	}
	for _, ev := range fa.Events() {
		fmt.Printf("write %d: %v\n", ev.Seq, ev.Faults)
	}
	// Output:
	// b got "datagram 0" from 127.0.0.1:1
	// b got "datagram 0" from 127.0.0.1:1
	// b got "datagram 1" from 127.0.0.1:1
	// b got "datagram 2" from 127.0.0.1:1
	// b got "datagram 4" from 127.0.0.1:1
	// write 0: duplicated
	// write 1: none
	// write 2: none
	// write 3: dropped
	// write 4: none
	// write 5: dropped
}

// A server and clients on one in-memory network; port 0 picks a port.
func ExampleNetwork_Listen() {
	n := vaulttest.NewNetwork()
	server, err := n.Listen(netip.MustParseAddrPort("10.0.0.1:53"))
	if err != nil {
		panic(err)
	}
	defer server.Close()
	client, err := n.Listen(netip.MustParseAddrPort("10.0.0.2:0"))
	if err != nil {
		panic(err)
	}
	defer client.Close()

	client.WriteTo([]byte("query"), server.LocalAddr())
	buf := make([]byte, 512)
	k, from, _ := server.ReadFrom(buf)
	fmt.Printf("server got %q from %v\n", buf[:k], from)
	server.WriteTo([]byte("answer"), from)
	k, from, _ = client.ReadFrom(buf)
	fmt.Printf("client got %q from %v\n", buf[:k], from)
	// Output:
	// server got "query" from 10.0.0.2:49152
	// client got "answer" from 10.0.0.1:53
}
