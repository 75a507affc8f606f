package main

import (
	"context"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

func TestQUIC(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config *vaultudp.Config
	}{
		{"defaults", nil},
		// MTU 1300 leaves 1231 bytes: below QUIC's usual 1280, so
		// quicConfig lowers InitialPacketSize to fit.
		{"MTU1300", &vaultudp.Config{MTU: 1300}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			const msg = "hello quic"
			got, stats, err := run(ctx, "127.0.0.1:0", "127.0.0.1:0", msg, tc.config)
			if err != nil {
				t.Fatal(err)
			}
			if got != msg {
				t.Fatalf("echo = %q, want %q", got, msg)
			}
			// QUIC's packets went through vaultudp's sealing, not around it.
			if stats.Handshakes == 0 || stats.DatagramsIn == 0 || stats.DatagramsOut == 0 {
				t.Fatalf("server stats %+v: want a vaultudp session carrying the QUIC packets", stats)
			}
			if stats.Drops.TooLarge != 0 {
				t.Errorf("server dropped %d datagrams as too large", stats.Drops.TooLarge)
			}
			t.Logf("server: %d datagrams in, %d out, MaxPayload %d", stats.DatagramsIn, stats.DatagramsOut, stats.MaxPayload)
		})
	}
}

// A path too small for QUIC fails with a message naming the fix instead of
// a QUIC handshake timeout.
func TestQUICConfigTooSmall(t *testing.T) {
	conn, err := vaultudp.Listen("udp", "127.0.0.1:0", &vaultudp.Config{MTU: vaultudp.MinMTU})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.MaxPayload() >= 1200 {
		t.Skipf("MaxPayload %d at MinMTU fits QUIC", conn.MaxPayload())
	}
	if _, err := quicConfig(conn); err == nil {
		t.Fatalf("quicConfig with MaxPayload %d: no error", conn.MaxPayload())
	}
}
