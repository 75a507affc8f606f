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
