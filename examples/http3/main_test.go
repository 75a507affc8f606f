package main

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

// The same HTTP/3 code gets the same responses over plain UDP and over
// vaultudp, and over vaultudp every QUIC packet was sealed.
func TestHTTP3(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	plain, err := Run(ctx, UDP, "127.0.0.1:0", Requests)
	if err != nil {
		t.Fatalf("udp: %v", err)
	}
	var conns []*vaultudp.Conn
	vault := Transport{"vaultudp", func(a string) (net.PacketConn, error) {
		c, err := vaultudp.Listen("udp", a, nil)
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	}}
	sealed, err := Run(ctx, vault, "127.0.0.1:0", Requests)
	if err != nil {
		t.Fatalf("vaultudp: %v", err)
	}
	if !slices.Equal(plain, sealed) {
		t.Fatalf("responses differ:\nudp:      %q\nvaultudp: %q", plain, sealed)
	}
	for i, want := range []string{`HTTP/3.0 200, 19 bytes, "hello over HTTP/3.0"`, "200, 262144 bytes", `200, 2 bytes, "42"`, "404"} {
		if !strings.Contains(sealed[i], want) {
			t.Errorf("response %d %q does not contain %q", i, sealed[i], want)
		}
	}
	if len(conns) != 2 {
		t.Fatalf("%d vaultudp Conns, want 2", len(conns))
	}
	st := conns[0].Stats() // the server's
	// The 256 KiB upload alone is more than 180 QUIC packets.
	if st.Handshakes == 0 || st.DatagramsIn < 180 || st.DatagramsOut == 0 {
		t.Errorf("server stats: %d handshakes, %d datagrams in, %d out; want the QUIC packets sealed", st.Handshakes, st.DatagramsIn, st.DatagramsOut)
	}
	t.Logf("server: %d datagrams in, %d out; drops %+v", st.DatagramsIn, st.DatagramsOut, st.Drops)
}
