package vaultudp

import (
	"testing"
	"time"
)

// echoServer answers every datagram srv reads with itself, until srv
// closes.
func echoServer(srv *Conn) {
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// echoClients has n clients, together at a time, each a Conn of its own,
// handshake with srv (an echoServer), send it a 200-byte datagram, read
// the echo and close.
func echoClients(tb testing.TB, srv *Conn, n, together int) {
	tb.Helper()
	for done := 0; done < n; done += together {
		k := min(together, n-done)
		errs := make(chan error, k)
		for range k {
			go func() {
				c, err := Listen("udp4", "127.0.0.1:0", nil)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitLong))
				if _, err := c.WriteToUDPAddrPort(make([]byte, 200), addrOf(srv)); err != nil {
					errs <- err
					return
				}
				_, _, err = c.ReadFromUDPAddrPort(make([]byte, 2048))
				errs <- err
			}()
		}
		for range k {
			if err := <-errs; err != nil {
				tb.Fatalf("client: %v", err)
			}
		}
	}
}

// BenchmarkServerMemory: the heap a server keeps per client after GC, with
// 1,000 clients that each handshook, had a datagram echoed and went (their
// peers and sessions stay for SessionLifetime). BenchmarkPeerMemory is the
// peer and session state alone; this is everything a real server holds,
// its handshake's leftovers and queues included.
func BenchmarkServerMemory(b *testing.B) {
	const clients, together = 1000, 50
	for range b.N {
		srv, err := Listen("udp4", "127.0.0.1:0", &Config{ReadQueue: 4096})
		if err != nil {
			b.Fatal(err)
		}
		echoServer(srv)
		// A first round makes what the server makes once (receive
		// buffers, trains, the handshake's pools); then the clients.
		echoClients(b, srv, together, together)
		before := liveHeap()
		echoClients(b, srv, clients, together)
		grew := int64(liveHeap()) - int64(before)
		b.ReportMetric(float64(grew)/clients, "bytes/client")
		srv.Close()
	}
}
