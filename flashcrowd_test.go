package vaultudp

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestFlashCrowd: 1,000 clients (200 under -race) handshake with one
// server at once, on loopback, each from a Conn of its own, and each
// sends a datagram the server echoes. All succeed; the test prints the
// distribution of the time to the echo, and how many hellos the server
// dropped at its full handshake queue (those clients waited for a retry).
func TestFlashCrowd(t *testing.T) {
	n := scaled(1000, 200)
	srv := listenT(t, "udp4", "127.0.0.1:0", &Config{ReadQueue: 4096})
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	// The clients' sockets first, so that their making is not timed.
	clients := make([]*Conn, n)
	for i := range clients {
		c, err := Listen("udp4", "127.0.0.1:0", nil)
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
		wg.Wait()
	}()
	took := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			if errs[i] = c.Handshake(ctx, addrOf(srv)); errs[i] != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(waitLong))
			if _, errs[i] = c.WriteToUDPAddrPort([]byte("hi"), addrOf(srv)); errs[i] != nil {
				return
			}
			_, _, errs[i] = c.ReadFromUDPAddrPort(make([]byte, 64))
			took[i] = time.Since(t0)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	all := time.Since(t0)
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 3 {
				t.Errorf("client %d: %v", i, err)
			}
		}
	}
	slices.Sort(took)
	q := func(p float64) time.Duration {
		return took[min(len(took)-1, int(p*float64(len(took))))].Round(time.Millisecond)
	}
	st := srv.Stats()
	t.Logf("%d clients at once: all done in %v; to the echo p50 %v, p90 %v, p99 %v, max %v; server: %d handshakes, %d hellos dropped at the full handshake queue, %d cookies sent",
		n, all.Round(time.Millisecond), q(0.5), q(0.9), q(0.99), took[len(took)-1].Round(time.Millisecond),
		st.Handshakes, st.Drops.HandshakeQueueFull, st.CookiesSent)
	if failed > 0 {
		t.Fatalf("%d of %d clients failed", failed, n)
	}
}
