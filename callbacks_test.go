package vaultudp

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCloseFromVerifyPeer: Config.VerifyPeer may call Close on its own
// Conn; Close returns (the handshake waiting for the callback's answer ends
// with it), and so does the callback.
func TestCloseFromVerifyPeer(t *testing.T) {
	parallel(t)
	var srv atomic.Pointer[Conn]
	closed := make(chan error, 1)
	cfg := &Config{VerifyPeer: func(netip.AddrPort, ed25519.PublicKey) error {
		closed <- srv.Load().Close()
		return nil
	}}
	s := listenT(t, "udp4", "127.0.0.1:0", cfg)
	srv.Store(s)
	c := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: 500 * time.Millisecond})
	go c.Handshake(context.Background(), addrOf(s))
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close from VerifyPeer: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close called from VerifyPeer did not return")
	}
}

// reentrantHandler is a slog.Handler that calls back into the Conn for
// every record, as a handler that adds the Conn's state to its records
// would.
type reentrantHandler struct {
	c       *atomic.Pointer[Conn]
	mu      sync.Mutex
	records []string
}

func (h *reentrantHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *reentrantHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *reentrantHandler) WithGroup(string) slog.Handler            { return h }
func (h *reentrantHandler) Handle(_ context.Context, r slog.Record) error {
	if c := h.c.Load(); c != nil {
		c.Stats()
		c.Peers()
	}
	h.mu.Lock()
	h.records = append(h.records, r.Message)
	h.mu.Unlock()
	return nil
}

// TestLoggerMayClose: a Logger's handler that closes the Conn when a
// session comes up (logged from a handshake's commit, perhaps on the
// reader) does not wait for itself: its records are handled on the
// events goroutine, which Close does not wait for while it is in the
// handler. (Before, Close waited forever for the reader that called it.)
func TestLoggerMayClose(t *testing.T) {
	parallel(t)
	closed := make(chan error, 1)
	var ap atomic.Pointer[Conn]
	h := &closingHandler{c: &ap, on: "vaultudp: peer up", closed: closed}
	a := listenT(t, "udp4", "127.0.0.1:0", &Config{Logger: slog.New(h)})
	ap.Store(a)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	if _, err := b.WriteToUDPAddrPort([]byte("x"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close from the Logger: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close called from the Logger's handler did not return")
	}
}

// closingHandler closes its Conn at the first record with message on.
type closingHandler struct {
	c      *atomic.Pointer[Conn]
	on     string
	once   sync.Once
	closed chan error
}

func (h *closingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *closingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *closingHandler) WithGroup(string) slog.Handler            { return h }
func (h *closingHandler) Handle(_ context.Context, r slog.Record) error {
	if c := h.c.Load(); c != nil && r.Message == h.on {
		h.once.Do(func() { h.closed <- c.Close() })
	}
	return nil
}

// TestLoggerMayCallTheConn: the Conn calls its Logger with none of its
// locks held, so a handler may call Stats and Peers: a session, a
// handshake that fails, and a rekey all log, and none deadlocks.
func TestLoggerMayCallTheConn(t *testing.T) {
	parallel(t)
	var ap atomic.Pointer[Conn]
	h := &reentrantHandler{c: &ap}
	cfg := &Config{Logger: slog.New(h), HandshakeTimeout: 300 * time.Millisecond}
	a := listenT(t, "udp4", "127.0.0.1:0", cfg)
	ap.Store(a)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		handshakeT(t, a, addrOf(b)) // session established
		// A handshake that fails: nobody listens there.
		dead := rawUDP(t)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		a.Handshake(ctx, addrOf2(dead))
	}()
	select {
	case <-done:
	case <-time.After(2 * waitLong):
		t.Fatal("deadlock: a Logger that calls Stats and Peers blocked the Conn")
	}
	// The failure is logged once the lock is released, after Handshake
	// has returned: look until it is there (bounded).
	logged := func() (established, failed bool, records []string) {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, m := range h.records {
			established = established || m == "vaultudp: peer up"
			failed = failed || m == "vaultudp: peer failed"
		}
		return established, failed, slices.Clone(h.records)
	}
	deadline := time.Now().Add(waitLong)
	for {
		established, failed, records := logged()
		if established && failed {
			t.Logf("%d records: %q", len(records), records)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("records %q: want a peer up and a peer failed", records)
		}
		time.Sleep(time.Millisecond)
	}
}

// countingHandler counts the records it is handed.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}

// TestLoggerFlushedAtClose: what the Conn logged before Close reaches the
// Logger's handler by the time Close returns (the CLI logs why a
// handshake failed and exits at once: the record was lost when the
// events goroutine saw Close first), as do the Events queued before it.
func TestLoggerFlushedAtClose(t *testing.T) {
	parallel(t)
	h := &countingHandler{}
	var events atomic.Int64
	c, err := Listen("udp4", "127.0.0.1:0", &Config{Logger: slog.New(h), Events: func(Event) { events.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	before := h.n.Load() // "listening", perhaps handled already
	const n = 100
	for i := range n {
		c.event(Event{Kind: EventForgotten, Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i+1))})
	}
	c.Close()
	if got := h.n.Load() - before; got < n {
		t.Errorf("the handler had %d of the %d records logged before Close", got, n)
	}
	if got := events.Load(); got != n {
		t.Errorf("Config.Events had %d of the %d events queued before Close", got, n)
	}
	if d := c.Stats().Drops.EventsDropped; d != 0 {
		t.Errorf("%d dropped: the test queued more than the queue holds", d)
	}
}

// blockingHandler holds its first record until release is closed,
// having said so on inside; it counts them all.
type blockingHandler struct {
	countingHandler
	once            sync.Once
	inside, release chan struct{}
}

func (h *blockingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message != "vaultudp: peer forgotten" {
		return nil // "listening", logged in Listen
	}
	h.once.Do(func() {
		close(h.inside)
		<-h.release
	})
	return h.countingHandler.Handle(ctx, r)
}

// TestCloseWaitsForBusyHandler: Close called on another goroutine while
// the Logger's handler runs waits for it, and for the records queued
// behind it (before, a flag set around the handler made Close return at
// once, and a program that exited then lost the records, as the CLI's
// "peer refused" in CI).
func TestCloseWaitsForBusyHandler(t *testing.T) {
	parallel(t)
	h := &blockingHandler{inside: make(chan struct{}), release: make(chan struct{})}
	c, err := Listen("udp4", "127.0.0.1:0", &Config{Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	c.event(Event{Kind: EventForgotten, Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 1)})
	<-h.inside
	const n = 10
	for i := range n {
		c.event(Event{Kind: EventForgotten, Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i+1))})
	}
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	close(h.release)
	select {
	case <-closed:
	case <-time.After(waitLong):
		t.Fatal("Close did not return")
	}
	if got := h.n.Load(); got != n+1 {
		t.Errorf("when Close returned the handler had %d records, want %d", got, n+1)
	}
}
