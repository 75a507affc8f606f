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

// The same client code gets the same answers over plain UDP and over
// vaultudp, and over vaultudp they travelled sealed.
func TestDNSDial(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plain, err := Run(ctx, UDP, "127.0.0.1:0", Questions)
	if err != nil {
		t.Fatalf("udp: %v", err)
	}
	var server *vaultudp.Conn
	vault := Vault
	vault.Listen = func(address string) (net.PacketConn, error) {
		c, err := vaultudp.Listen("udp", address, nil)
		server = c
		return c, err
	}
	sealed, err := Run(ctx, vault, "127.0.0.1:0", Questions)
	if err != nil {
		t.Fatalf("vaultudp: %v", err)
	}
	if !slices.Equal(plain, sealed) {
		t.Fatalf("answers differ:\nudp:      %q\nvaultudp: %q", plain, sealed)
	}
	if len(sealed) != len(Questions) {
		t.Fatalf("%d answers for %d questions", len(sealed), len(Questions))
	}
	for i, want := range []string{"192.0.2.1", "2001:db8::1", "192.0.2.25", "sealed by vaultudp", "NXDOMAIN"} {
		if !strings.Contains(sealed[i], want) {
			t.Errorf("answer %d %q does not contain %q", i, sealed[i], want)
		}
	}
	st := server.Stats()
	if st.Handshakes < 1 || st.DatagramsIn != uint64(len(Questions)) || st.DatagramsOut != uint64(len(Questions)) {
		t.Errorf("server stats: %d handshakes, %d datagrams in, %d out; want at least 1 and %d each way, sealed",
			st.Handshakes, st.DatagramsIn, st.DatagramsOut, len(Questions))
	}
}
