package vaultudp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"log/slog"
	"net/netip"
	"runtime"
	"time"
)

// What happens to a Conn's peers reaches its user in one place: event,
// which logs it at a level an operator can live with (nothing per
// datagram) and hands it to Config.Events. It is always called with no
// lock held.

// EventKind is what happened to a peer.
type EventKind uint8

const (
	// EventUp: the peer has a session, its first or its first since it
	// went down (rekeys are not events).
	EventUp EventKind = iota + 1
	// EventDown: the peer has no session any more: its last one expired,
	// or it went silent through a handshake (Err says which).
	EventDown
	// EventRefused: the trust rules refused a key from the peer's
	// address (Key, Err). From a hello, the key is only what the hello
	// claimed: anyone can send one from the peer's address.
	EventRefused
	// EventFailed: a handshake attempt with the peer failed (Err).
	EventFailed
	// EventRoamed: the peer proved a new address, Addr; From is the one
	// it left.
	EventRoamed
	// EventReset: the peer said, with its token, that it lost the
	// session (it restarted); a new handshake starts.
	EventReset
	// EventForgotten: a learned peer was forgotten, idle.
	EventForgotten
)

var eventNames = [...]string{"", "up", "down", "refused", "failed", "roamed", "reset", "forgotten"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Event is one thing that happened to a peer.
type Event struct {
	Kind EventKind
	Addr netip.AddrPort
	From netip.AddrPort    // EventRoamed: the address the peer left
	Key  ed25519.PublicKey // the peer's key, where known (EventRefused: the key refused)
	Err  error             // EventRefused, EventFailed, EventDown: why
	Time time.Time
}

// eventsFlushWait bounds how long Close waits for the callbacks to take
// what was queued before it: long enough for any handler that writes
// records somewhere, short enough that a callback blocked on the caller
// of Close (an unbuffered channel the program stopped reading) does not
// hang it.
const eventsFlushWait = time.Second

// eventQueueLen bounds the events and log records waiting for
// Config.Events and the Logger; beyond it they are dropped and counted
// (Stats.EventsDropped).
const eventQueueLen = 256

// notice is what the events goroutine hands to the application: an event
// for Config.Events, or a log record for the Logger's handler h.
type notice struct {
	e Event
	h slog.Handler // nil: e is an event
	r slog.Record
}

// queuedHandler is the application's slog.Handler behind the Conn's
// Logger: records go to the events goroutine (dispatchEvents), which
// calls the handler. So the application's handler never runs under a
// lock of the Conn's, on its reader, or in a handshake's commit, which
// the Conn's code logs from (a handler that calls Close from there would
// wait for itself): it may call any method of the Conn, Close included.
// Only Enabled runs where the Conn logs.
type queuedHandler struct {
	h slog.Handler
	c *Conn
}

func (q queuedHandler) Enabled(ctx context.Context, l slog.Level) bool { return q.h.Enabled(ctx, l) }

func (q queuedHandler) Handle(_ context.Context, r slog.Record) error {
	q.c.notify(notice{h: q.h, r: r.Clone()})
	return nil
}

func (q queuedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return queuedHandler{q.h.WithAttrs(as), q.c}
}

func (q queuedHandler) WithGroup(name string) slog.Handler {
	return queuedHandler{q.h.WithGroup(name), q.c}
}

// notify queues n for the events goroutine, or counts it dropped.
func (c *Conn) notify(n notice) {
	select {
	case c.events <- n:
	default:
		c.stats.eventsDropped.Add(1)
	}
}

// event reports e: logs it, and queues it for Config.Events.
func (c *Conn) event(e Event) {
	e.Time = c.clk.wall()
	level := slog.LevelInfo
	switch e.Kind {
	case EventRefused, EventFailed:
		level = slog.LevelWarn
	case EventForgotten:
		level = slog.LevelDebug
	}
	if ctx := context.Background(); c.log.Enabled(ctx, level) {
		// Only then: the key's text and the attributes cost a handshake
		// four allocations that a discarding Logger would throw away.
		attrs := []any{"peer", e.Addr}
		if e.From.IsValid() {
			attrs = append(attrs, "from", e.From)
		}
		if e.Key != nil {
			attrs = append(attrs, "key", EncodePublicKey(e.Key))
		}
		if e.Err != nil {
			attrs = append(attrs, "err", e.Err)
		}
		c.log.Log(ctx, level, "vaultudp: peer "+e.Kind.String(), attrs...)
	}
	if c.cfg.Events != nil {
		c.notify(notice{e: e})
	}
}

// dispatchEvents calls Config.Events for each queued event, and the
// Logger's handler for each queued record, in order, until Close; what
// was queued before Close is still delivered before Close returns (a
// record of why the last handshake failed, logged just before a program
// closes the Conn and exits, is not lost), at most eventQueueLen of them,
// for up to eventsFlushWait (then the rest after Close). A callback may
// call Close: that Close does not wait for the goroutine it runs on
// (evCaller), and the rest is delivered once the callback returns.
func (c *Conn) dispatchEvents() {
	defer close(c.evDone)
	c.evCaller.Store(goroutineID())
	for {
		select {
		case n := <-c.events:
			c.hand(n)
		case <-c.closed:
			for {
				select {
				case n := <-c.events:
					c.hand(n)
				default:
					return
				}
			}
		}
	}
}

// hand gives n to the application.
func (c *Conn) hand(n notice) {
	if n.h != nil {
		n.h.Handle(context.Background(), n.r)
	} else {
		c.cfg.Events(n.e)
	}
}

// goroutineID returns the calling goroutine's id, from the first line of
// its stack ("goroutine 42 [running]:"). Only Close asks (once), and the
// events goroutine (once): whether Close runs inside a callback is the one
// question the Conn cannot answer otherwise, and a flag set around the
// callback cannot tell that Close from one on another goroutine while a
// callback runs, which must wait.
func goroutineID() uint64 {
	var buf [32]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	var id uint64
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			break
		}
		id = id*10 + uint64(ch-'0')
	}
	return id
}
