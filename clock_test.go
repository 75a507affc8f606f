package vaultudp

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand. Each Conn that uses it
// subscribes a ticker; advance moves the time and has every subscribed
// Conn run its timers once, and returns when they all have: after
// advance, the timers have seen the new time.
type fakeClock struct {
	mu   sync.Mutex
	t    time.Duration // since the clock began
	base time.Time     // the wall time at its beginning
	subs []chan time.Time
	done chan struct{} // one per tick handled
}

func newFakeClock() *fakeClock {
	return &fakeClock{base: time.Now(), done: make(chan struct{}, 64)} // now: hellos carry it, peers check it
}

func (f *fakeClock) since() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) wall() time.Time { return f.base.Add(f.since()) }

func (f *fakeClock) ticker(time.Duration) (<-chan time.Time, func()) {
	ch := make(chan time.Time)
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, c := range f.subs {
			if c == ch {
				f.subs = append(f.subs[:i], f.subs[i+1:]...)
				return
			}
		}
	}
}

func (f *fakeClock) ticked() { f.done <- struct{}{} }

// advance moves the clock by d and runs every subscribed Conn's timers
// once, in steps of at most step (zero: one step), as the system's ticker
// would every housekeepingEvery.
func (f *fakeClock) advance(t testing.TB, d, step time.Duration) {
	t.Helper()
	if step <= 0 || step > d {
		step = d
	}
	for moved := time.Duration(0); moved < d; moved += step {
		f.mu.Lock()
		f.t += min(step, d-moved)
		now, subs := f.t, append([]chan time.Time(nil), f.subs...)
		f.mu.Unlock()
		for _, ch := range subs {
			select {
			case ch <- f.base.Add(now):
			case <-time.After(waitLong):
				t.Fatal("fakeClock: a Conn did not take its tick (closed?)")
			}
			select {
			case <-f.done:
			case <-time.After(waitLong):
				t.Fatal("fakeClock: a Conn did not finish its tick")
			}
		}
	}
}
