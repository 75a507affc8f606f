package vaultudp

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestReview6CloseWithBlockedEventsCallback: a program forwards
// Config.Events into a channel that its main loop reads, and the main
// loop calls Close when it decides to stop, reading no further (Close's
// doc: "Close returns after every goroutine of the Conn has ended (but
// the Config.Events callback, if one runs then: it may be what called
// Close)"). Since 093afd1 Close waits for the events goroutine to deliver
// everything queued, and so for a callback blocked on the caller of
// Close: Close never returns. Before, a callback that was running made
// Close skip the wait (evBusy), and this test passed.
func TestReview6CloseWithBlockedEventsCallback(t *testing.T) {
	parallel(t)
	evs := make(chan Event) // unbuffered: the callback waits for the main loop
	stop := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(stop) }) } // the test's own way out
	defer unblock()
	c, err := Listen("udp4", "127.0.0.1:0", &Config{Events: func(e Event) {
		select {
		case evs <- e:
		case <-stop:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c.event(Event{Kind: EventForgotten, Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i+1))})
	}
	<-evs // the main loop takes the first event and decides to stop
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(waitLong):
		unblock()
		<-closed
		t.Fatal("finding 2: Close waited for an Events callback blocked on the goroutine that called Close (a deadlock in a program); it waits a second at most (eventsFlushWait)")
	}
}

// TestReview6GoroutineID: goroutineID, which Close compares with the
// events goroutine's, is non-zero, stable on a goroutine, and differs
// between goroutines (a zero on both sides would make every Close skip
// its wait).
func TestReview6GoroutineID(t *testing.T) {
	parallel(t)
	me := goroutineID()
	if me == 0 || goroutineID() != me {
		t.Fatalf("goroutineID: %d, then %d", me, goroutineID())
	}
	ids := make(chan uint64, 8)
	for range cap(ids) {
		go func() { ids <- goroutineID() }()
	}
	seen := map[uint64]bool{me: true}
	for range cap(ids) {
		id := <-ids
		if id == 0 || seen[id] {
			t.Fatalf("goroutineID %d: zero or seen on another goroutine (%v)", id, seen)
		}
		seen[id] = true
	}
}
