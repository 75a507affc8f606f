package vaultudp

import "time"

// clock is the time every timed rule of a Conn reads: the monotonic time
// of its timers (timers.go, through Conn.now, which housekeeping advances
// on each tick), the wall time of handshake timestamps and cookies, and
// the ticks that run the timers. A Conn uses the system's (sysClock);
// tests drive one by hand (fakeClock in clock_test.go), so that a rule
// that waits seconds is tested in microseconds.
//
// What is not on it, on purpose: deadlines (the application's, on the
// system's clock as *net.UDPConn's are), rate limits (x/time/rate's
// buckets), and the send queue's streaming estimate, which measures system
// calls.
type clock interface {
	// since returns the monotonic time since the clock began.
	since() time.Duration
	// wall returns the wall-clock time.
	wall() time.Time
	// ticker returns a channel that delivers a tick every d, and a
	// function that stops it.
	ticker(d time.Duration) (<-chan time.Time, func())
	// ticked tells the clock that a tick was handled (fakeClock waits
	// for it; the system's ignores it).
	ticked()
}

// sysClock is the system's clock, begun when the Conn was made; wallNow
// is Config.now.
type sysClock struct {
	start   time.Time
	wallNow func() time.Time
}

func (c sysClock) since() time.Duration { return time.Since(c.start) }
func (c sysClock) wall() time.Time      { return c.wallNow() }
func (c sysClock) ticked()              {}

func (c sysClock) ticker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}
