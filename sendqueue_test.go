package vaultudp

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// streaming makes c's writes take the send queue, as a writer that comes
// back faster than its system calls does, and reports whether c's socket
// has UDP GSO (without it nothing is queued).
func streaming(t *testing.T, c *Conn) {
	t.Helper()
	if !c.sock.Load().Caps().GSO {
		t.Skip("no UDP GSO here: writes are never queued")
	}
	c.sq.sendCost.Store(int64(time.Hour)) // every write comes back sooner than half of it
}

func setBeforeSend(c *Conn, f func() error) {
	c.sq.mu.Lock()
	c.sq.beforeSend = f
	c.sq.mu.Unlock()
}

// TestSendQueueOrderAndClose: a streaming writer's datagrams are all
// sent, in order, in trains; and those still queued when Close comes are
// sent before the socket closes, as a socket sends what a write that
// returned gave it.
func TestSendQueueOrderAndClose(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	streaming(t, a)
	release := make(chan struct{})
	setBeforeSend(a, func() error { <-release; return nil }) // the trains gather
	const n = 150                                            // fewer than the queue holds (256 KiB of trains, datagrams padded to 1452 bytes)
	msg := make([]byte, 200)
	for i := range n {
		binary.BigEndian.PutUint32(msg, uint32(i))
		if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for i := range n {
		got, _ := readWithin(t, b, waitLong)
		if len(got) != len(msg) || binary.BigEndian.Uint32(got) != uint32(i) {
			t.Fatalf("datagram %d: %d bytes, number %d", i, len(got), binary.BigEndian.Uint32(got))
		}
	}
	expectNothing(t, b, 20*time.Millisecond)
	if s := a.Stats(); s.DatagramsOut != n || s.Drops.SendFailed != 0 {
		t.Fatalf("DatagramsOut %d, SendFailed %d; want %d, 0", s.DatagramsOut, s.Drops.SendFailed, n)
	}
}

// TestSendQueueFullWaits: a writer that fills the send queue waits, as on
// a socket whose send buffer is full: until there is room, its write
// deadline (a timeout error), or Close (net.ErrClosed).
func TestSendQueueFullWaits(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	streaming(t, a)
	release := make(chan struct{})
	setBeforeSend(a, func() error { <-release; return nil })
	msg := make([]byte, 1000)
	fill := func() int {
		// Writes until one waits: the deadline ends it.
		if err := a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		for i := range 2 * sendQueueBytes / len(msg) {
			_, err := a.WriteToUDPAddrPort(msg, addrOf(b))
			if err == nil {
				continue
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("write %d: %v, want a timeout", i, err)
			}
			return i
		}
		t.Fatalf("%d writes, none waited for room in the queue", 2*sendQueueBytes/len(msg))
		return 0
	}
	accepted := fill()
	if accepted == 0 || accepted*len(msg) > sendQueueBytes+1500 {
		t.Fatalf("%d writes of %d bytes accepted before the queue was full; it holds %d bytes", accepted, len(msg), sendQueueBytes)
	}
	// Room again once the sender goes on.
	close(release)
	a.SetWriteDeadline(time.Time{})
	if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
		t.Fatalf("a write once the queue drained: %v", err)
	}
	// Close ends a wait.
	hold := make(chan struct{})
	setBeforeSend(a, func() error { <-hold; return nil })
	defer close(hold)
	for {
		errc := make(chan error, 1)
		go func() { _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); errc <- err }()
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("write before the queue is full: %v", err)
			}
			continue
		case <-time.After(50 * time.Millisecond): // it waits (the queue is full), or is slow: Close ends it either way
		}
		go a.Close()
		if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a write waiting at Close: %v, want net.ErrClosed", err)
		}
		return
	}
}

// TestSendQueueFailureCounted: queued datagrams the socket refuses are
// counted in Drops.SendFailed, each (the writes that queued them have
// returned).
func TestSendQueueFailureCounted(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	streaming(t, a)
	release := make(chan struct{})
	setBeforeSend(a, func() error { <-release; return errors.New("refused") })
	msg := make([]byte, 100)
	const n = 10
	for range n {
		if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	a.Close() // what is queued goes, or fails, first
	if got := a.Stats().Drops.SendFailed; got != n {
		t.Fatalf("Drops.SendFailed %d, want %d", got, n)
	}
}

// TestSendQueueAllocs: a streaming writer's datagrams, queued and sent in
// trains, cost no allocation each once the queue's trains exist.
func TestSendQueueAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race; CI runs the Alloc tests without it")
	}
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	streaming(t, a)
	msg, buf := make([]byte, 1200), make([]byte, 2048)
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	burst := func() { // 16 queued, then read: within the socket's buffer
		for range 16 {
			if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
				t.Fatal(err)
			}
		}
		for range 16 {
			if _, _, err := b.ReadFromUDPAddrPort(buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 20 { // the trains and the packet free list
		burst()
	}
	if allocs := testing.AllocsPerRun(50, burst) / 16; allocs > 0 {
		t.Errorf("%.3f allocations per queued datagram, want 0", allocs)
	}
}

// liveHeap returns the heap in use after a collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSendQueueMemoryBroadcast: a server that Broadcasts small updates to
// 16 clients through the send queue holds, once they are sent, no more
// than a few trains: the queue's bound counts the memory of its trains,
// which start small, and it keeps few spent ones.
func TestSendQueueMemoryBroadcast(t *testing.T) {
	// Not parallel: its heap must be its own to the MiB (run first, as the
	// allocation counts are).
	cfg := func() *Config { return &Config{Padding: PadNone, ReadQueue: 4096} }
	a := listenT(t, "udp4", "127.0.0.1:0", cfg())
	streaming(t, a)
	// The heap is measured from before the clients, which are closed
	// before it is measured again: what remains is the server's.
	before := liveHeap()
	var clients []*Conn
	open := &clients // closed at the end if the test stops early; nothing else keeps them
	t.Cleanup(func() {
		for _, c := range *open {
			c.Close()
		}
	})
	for range 16 {
		c, err := Listen("udp4", "127.0.0.1:0", cfg()) // not listenT: nothing must keep it once closed
		if err != nil {
			t.Fatal(err)
		}
		handshakeT(t, c, addrOf(a))
		clients = append(clients, c)
		go func() { // drain, so that the clients' queues hold nothing
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
					return
				}
			}
		}()
	}
	for _, c := range clients { // the server has each client's session confirmed
		if _, err := c.WriteToUDPAddrPort([]byte("hi"), addrOf(a)); err != nil {
			t.Fatal(err)
		}
		readWithin(t, a, waitLong)
	}
	waitQueueIdle(t, a)
	msg := make([]byte, 64)
	const rounds = 500
	for range rounds {
		if n, err := a.Broadcast(msg); err != nil || n != len(clients) {
			t.Fatalf("Broadcast = %d, %v", n, err)
		}
	}
	waitQueueIdle(t, a)
	for _, c := range clients {
		c.Close()
	}
	clients = nil
	after := liveHeap()
	grew := int64(after) - int64(before)
	t.Logf("%d Broadcasts of %d bytes to %d clients: heap %+.2f MiB after GC (send queue: %d spent trains kept)",
		rounds, len(msg), 16, float64(grew)/(1<<20), len(a.sq.free))
	if grew > 2<<20 {
		t.Errorf("heap grew by %.1f MiB, want within 2 MiB", float64(grew)/(1<<20))
	}
}

// TestSendQueueMemoryEchoClients: an echo server that streams its answers
// to 300 clients, each of which says hello, reads its echo and goes, keeps
// little more than the clients' peer state once they are gone.
func TestSendQueueMemoryEchoClients(t *testing.T) {
	// Not parallel: its heap must be its own to the MiB (run first, as the
	// allocation counts are).
	srv := listenT(t, "udp4", "127.0.0.1:0", &Config{ReadQueue: 4096})
	streaming(t, srv)
	echoServer(srv)
	const together = 30
	round := func() { echoClients(t, srv, together, together) }
	// A first round makes what the server makes once (its receive
	// buffers, the queue's trains); the next 300 clients are measured.
	round()
	waitQueueIdle(t, srv)
	before := liveHeap()
	const clients = 300
	for range clients / together {
		round()
	}
	waitQueueIdle(t, srv)
	grew := int64(liveHeap()) - int64(before)
	t.Logf("%d echo clients: server heap %+.2f MiB after GC (%.1f KiB per client; %d peers)",
		clients, float64(grew)/(1<<20), float64(grew)/1024/clients, len(srv.Peers()))
	if grew > 2<<20 {
		t.Errorf("heap grew by %.1f MiB, want within 2 MiB", float64(grew)/(1<<20))
	}
}

// TestSendQueueFullConnOwnDoesNotWait: the Conn's own goroutines never
// wait for room in a full send queue (a writer may hold it as long as its
// deadline allows): a keepalive the timer goroutine sends then is not
// sent, at once, and the timers go on.
func TestSendQueueFullConnOwnDoesNotWait(t *testing.T) {
	parallel(t)
	a := listenT(t, "udp4", "127.0.0.1:0", nil)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, a, addrOf(b))
	streaming(t, a)
	release := make(chan struct{})
	defer close(release)
	setBeforeSend(a, func() error { <-release; return nil })
	a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	msg := make([]byte, 1000)
	for range 2 * sendQueueBytes / len(msg) { // until a write times out: the queue is full
		if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
			break
		}
	}
	p, s := peerOf(a, addrOf(b)), currentSession(a, addrOf(b))
	done := make(chan struct{})
	go func() { a.sendKeepalive(p, s, addrOf(b)); close(done) }()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatal("a keepalive waited for room in the full send queue")
	}
	if n := a.Stats().KeepalivesSent; n != 0 {
		t.Fatalf("%d keepalives counted as sent into a full queue", n)
	}
}
