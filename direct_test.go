package vaultudp

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

// Several goroutines reading one Conn at once (one reads the socket, the
// others wait for what it queues or for their turn) receive every
// datagram exactly once.
func TestConcurrentReaders(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, &Config{ReadQueue: 4096})
	handshakeT(t, a, addrOf(b))
	const readers, total = 4, 4000
	var mu sync.Mutex
	seen := make(map[uint32]int)
	arrived := make(chan struct{}, total) // one per new datagram, for pacing
	var wg sync.WaitGroup
	b.SetReadDeadline(time.Now().Add(20 * time.Second))
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, _, err := b.ReadFromUDPAddrPort(buf)
				if err != nil {
					return // the deadline, set short once all arrived
				}
				if n != 4 {
					t.Errorf("read %d bytes", n)
					return
				}
				mu.Lock()
				k := binary.BigEndian.Uint32(buf)
				seen[k]++
				first := seen[k] == 1
				done := len(seen) == total
				mu.Unlock()
				if first {
					arrived <- struct{}{}
				}
				if done {
					b.SetReadDeadline(time.Now()) // wakes the other readers
				}
			}
		}()
	}
	msg := make([]byte, 4)
	counted := 0
	for i := range total {
		binary.BigEndian.PutUint32(msg, uint32(i))
		if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
			t.Fatal(err)
		}
		// Pace the sender (at most 256 in flight) so that nothing
		// overflows; a lost datagram ends the wait at the read deadline.
		for ; counted < i-256; counted++ {
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatalf("only %d of %d arrived (stats %+v)", counted, i, b.Stats())
			}
		}
	}
	wg.Wait()
	if len(seen) != total {
		t.Fatalf("%d of %d datagrams arrived (stats %+v)", len(seen), total, b.Stats())
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("datagram %d read %d times", k, n)
		}
	}
}

// A Conn whose application reads nothing for a while still answers
// handshakes (the background reader takes the socket when no one reads),
// and a reader arriving later takes the socket back and gets the data.
func TestBackgroundReaderHandsOver(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	// Nobody reads b: the handshake completes through b's background reader.
	handshakeT(t, a, addrOf(b))
	if _, err := a.WriteToUDPAddrPort([]byte("after the handshake"), addrOf(b)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "after the handshake", addrOf(a))
	// b now reads directly; a new peer's handshake is answered by the
	// reading goroutine itself.
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	if _, err := c.WriteToUDPAddrPort([]byte("from c"), addrOf(b)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "from c", addrOf(c))
}
