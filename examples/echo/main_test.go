package main

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestEcho(t *testing.T) {
	for _, tc := range []struct{ name, addr string }{
		{"IPv4", "127.0.0.1:0"},
		{"IPv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "IPv6" {
				skipWithoutIPv6(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			const msg = "hello, vaultudp"
			got, err := run(ctx, tc.addr, tc.addr, msg)
			if err != nil {
				t.Fatal(err)
			}
			if got != msg {
				t.Fatalf("echo = %q, want %q", got, msg)
			}
		})
	}
}

func skipWithoutIPv6(t *testing.T) {
	t.Helper()
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	c.Close()
}
