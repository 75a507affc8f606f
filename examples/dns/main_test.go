package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestDNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := run(ctx, "127.0.0.1:0", "127.0.0.1:0", zoneName)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != zoneAddr {
		t.Fatalf("A %s = %v, want %s", zoneName, got, zoneAddr)
	}
}

func TestDNSNameError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := run(ctx, "127.0.0.1:0", "127.0.0.1:0", "elsewhere.example.")
	if err == nil || !strings.Contains(err.Error(), "NXDOMAIN") {
		t.Fatalf("err = %v, want NXDOMAIN", err)
	}
}
