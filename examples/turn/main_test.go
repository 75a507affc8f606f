package main

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

// The same TURN code gets the same results over plain UDP and over
// vaultudp, and over vaultudp the client-server traffic was sealed.
func TestTURN(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 10
	plain, err := Run(ctx, UDP, n)
	if err != nil {
		t.Fatalf("udp: %v", err)
	}
	var conns []*vaultudp.Conn
	vault := Transport{"vaultudp", func(a string) (net.PacketConn, error) {
		c, err := vaultudp.Listen("udp4", a, nil)
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	}}
	sealed, err := Run(ctx, vault, n)
	if err != nil {
		t.Fatalf("vaultudp: %v", err)
	}
	if !reflect.DeepEqual(plain, sealed) {
		t.Fatalf("results differ:\nudp:      %+v\nvaultudp: %+v", plain, sealed)
	}
	if !sealed.MappedIsLocal || sealed.RelayIP != "127.0.0.1" || !sealed.PeerSawRelay || !sealed.ClientSawPeer {
		t.Errorf("result %+v", sealed)
	}
	for i := range n {
		if i >= len(sealed.ToPeer) || sealed.ToPeer[i] != fmt.Sprintf("to peer #%d", i) ||
			i >= len(sealed.ToClnt) || sealed.ToClnt[i] != fmt.Sprintf("to client #%d", i) {
			t.Fatalf("datagrams %q and %q, want %d each way in order", sealed.ToPeer, sealed.ToClnt, n)
		}
	}
	if len(conns) != 2 {
		t.Fatalf("%d vaultudp Conns, want 2", len(conns))
	}
	st := conns[0].Stats() // the TURN server's
	// In: Binding, Allocate (twice: the first is answered with the
	// realm and nonce), CreatePermission, n data. Out: their answers and
	// n data.
	if st.Handshakes < 1 || st.DatagramsIn < n+4 || st.DatagramsOut < n+4 {
		t.Errorf("server stats: %d handshakes, %d datagrams in, %d out", st.Handshakes, st.DatagramsIn, st.DatagramsOut)
	}
	t.Logf("TURN server: %d datagrams in, %d out, all sealed", st.DatagramsIn, st.DatagramsOut)
}
