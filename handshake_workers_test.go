package vaultudp

import (
	"context"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hsElemFrom is a queued message of kind k from source i.
func hsElemFrom(k hsKind, i int, proved bool) *handshakeElem {
	return &handshakeElem{kind: k, proved: proved, from: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4000)}
}

// workOnly returns a queue whose rules are the work bound's alone: no
// floor of hsMinQueued messages.
func workOnly(workers int, retry, timeout time.Duration) *hsWork {
	w := newHSWork(workers, retry, timeout)
	w.minQueued = 0
	return w
}

// take pops a message and commits it at once, as a worker does.
func take(w *hsWork, first bool) (*handshakeElem, uint64, bool) {
	e, tk, ok := w.pop(first)
	if ok {
		w.finish(tk, func() {})
	}
	return e, tk, ok
}

// fill pushes messages of kind k from new sources until one is refused,
// and returns how many were queued.
func fill(t *testing.T, w *hsWork, k hsKind, proved bool, first int) int {
	t.Helper()
	for n := 0; n < 100000; n++ {
		if w.push(hsElemFrom(k, first+n, proved)) != pushQueued {
			return n
		}
	}
	t.Fatal("the queue took 100,000 messages")
	return 0
}

// TestHSWorkBudget: the handshake queue's rules (handshake_workers.go),
// with one worker and a retry interval of 100 ms, so a budget of 100 ms
// of work: hellos at their first estimate (500 µs) fill it at 200, those
// that proved nothing at half of it; replies and final messages have the
// whole budget to themselves, ahead of the hellos; v2 key exchanges a
// sixteenth of a retry interval's work, leaving room for hellos; measured
// costs change what fits at once; a hello from a source whose earlier
// hello waits takes its place; the number
// of messages is bounded whatever the estimates, and the first 256 are
// queued whatever their estimates.
func TestHSWorkBudget(t *testing.T) {
	retry := 100 * time.Millisecond
	hello, final := hsFirstCost[kindHello], hsFirstCost[kindFinal]

	w := workOnly(1, retry, 0)
	if got, want := fill(t, w, kindHello, false, 0), int(retry/2/hello); got != want {
		t.Errorf("hellos without a cookie: %d queued, want %d (half the budget)", got, want)
	}
	if got, want := fill(t, w, kindHello, true, 1000), int(retry/hello)-int(retry/2/hello); got != want {
		t.Errorf("then hellos with a valid cookie: %d more, want %d (the other half)", got, want)
	}
	if got, want := fill(t, w, kindFinal, false, 2000), int(retry/final); got != want {
		t.Errorf("then final messages, the hellos' budget full: %d, want %d (a budget of their own)", got, want)
	}
	if w.room(kindV2, false) {
		t.Error("a v2 key exchange fits in a full queue")
	}

	// Taken: replies and final messages first, each class in order, with
	// tickets in the order taken.
	var last uint64
	for i := range 5 {
		e, tk, ok := take(w, true)
		if !ok || e.kind != kindFinal {
			t.Fatalf("pop %d: %v %v, want a final message first", i, ok, e)
		}
		if want := hsElemFrom(kindFinal, 2000+i, false).from; e.from != want {
			t.Fatalf("pop %d: final from %v, want %v (in order)", i, e.from, want)
		}
		if i > 0 && tk != last+1 {
			t.Fatalf("ticket %d after %d", tk, last)
		}
		last = tk
	}

	// Same source: a hello whose source's earlier one waits takes its
	// place (its message, its cookie's proof) and leaves the count and
	// the order as they were; once that one is out, it queues.
	w = workOnly(1, retry, 0)
	if w.push(hsElemFrom(kindHello, 1, false)) != pushQueued || w.push(hsElemFrom(kindHello, 2, false)) != pushQueued {
		t.Fatal("two hellos refused by an empty queue")
	}
	retried := hsElemFrom(kindHello, 1, true)
	retried.n = copy(retried.msg[:], "the retry")
	if got := w.push(retried); got != pushMerged {
		t.Errorf("a hello from a source whose hello waits: %v, want merged", got)
	}
	if w.push(hsElemFrom(kindFinal, 1, false)) != pushQueued {
		t.Error("a final message from the same source was refused")
	}
	take(w, true) // the final
	if e, _, _ := take(w, true); e.from != retried.from || string(e.data()) != "the retry" || !e.proved {
		t.Errorf("first hello taken: from %v, %q, proved %v; want the retry's, in the first's place", e.from, e.data(), e.proved)
	}
	if e, _, _ := take(w, true); e.from == retried.from {
		t.Error("the source's hello was taken twice")
	}
	if w.push(hsElemFrom(kindHello, 1, true)) != pushQueued {
		t.Error("a hello from a source whose hello was taken was refused")
	}

	// v2 key exchanges: a 1/hsV2Share of one worker's budget, and hellos
	// that proved nothing still find room behind them.
	w = workOnly(2, retry, 0)
	if got, want := fill(t, w, kindV2, false, 0), int(retry/hsV2Share/hsFirstCost[kindV2]); got != want {
		t.Errorf("v2 key exchanges: %d, want %d", got, want)
	}
	if !w.room(kindHello, false) {
		t.Error("v2 key exchanges left no room for a hello without a cookie")
	}

	// Measurements: hellos that cost 5 ms each lately leave room for 20.
	w = workOnly(1, retry, 0)
	for range 200 {
		w.observe(kindHello, 5*time.Millisecond)
	}
	if got := w.estimate(kindHello); got < 4900*time.Microsecond || got > 5*time.Millisecond {
		t.Fatalf("estimate after 200 measurements of 5 ms: %v", got)
	}
	if got := fill(t, w, kindHello, true, 0); got != 20 {
		t.Errorf("hellos at 5 ms: %d queued, want 20", got)
	}
	// ... and a lower estimate lets more in at once: the queued work is
	// counted at the estimate of now, not of when it came.
	for range 200 {
		w.observe(kindHello, 500*time.Microsecond)
	}
	if !w.room(kindHello, true) {
		t.Error("no room once the estimate fell")
	}
	// One measurement has a bounded weight: a commit that waited 10 s
	// (a VerifyPeer callback) counts as the budget, once in eight.
	w.observe(kindHello, 10*time.Second)
	if got := w.estimate(kindHello); got > retry/hsCostWeight+time.Millisecond {
		t.Errorf("estimate after one 10 s measurement: %v", got)
	}

	// The number of messages is bounded when the estimates are tiny.
	w = workOnly(2, time.Hour, 0)
	for range 100 {
		w.observe(kindHello, 0)
	}
	if got := fill(t, w, kindHello, true, 0); got != 2*hsMaxQueuedPerWorker {
		t.Errorf("at the least estimate: %d queued, want %d", got, 2*hsMaxQueuedPerWorker)
	}

	// The horizon is half the handshake timeout, if longer than a retry
	// interval: an answer until then is one the initiator takes.
	if w := workOnly(2, retry, 10*retry); w.budget != 10*retry {
		t.Errorf("budget with 2 workers, a timeout of 10 retry intervals: %v, want %v", w.budget, 10*retry)
	}

	// Whatever the estimates, the first hsMinQueued native messages are
	// queued (the queue's size before its work bound); v2 key exchanges,
	// one at least.
	w = newHSWork(1, retry, 0)
	for range 100 {
		w.observe(kindHello, time.Second)
		w.observe(kindV2, time.Second)
	}
	if got := fill(t, w, kindHello, false, 0); got != hsMinQueued {
		t.Errorf("hellos at an estimate of a whole budget: %d queued, want %d", got, hsMinQueued)
	}
	w = newHSWork(1, retry, 0)
	for range 100 {
		w.observe(kindV2, time.Second)
	}
	if got := fill(t, w, kindV2, false, 0); got != 1 {
		t.Errorf("v2 key exchanges at an estimate of a whole budget: %d queued, want 1", got)
	}

	// An empty queue always takes one, whatever its cost.
	w = workOnly(1, time.Millisecond, 0)
	for range 100 {
		w.observe(kindHello, time.Second)
	}
	if got := fill(t, w, kindHello, false, 0); got != 1 {
		t.Errorf("a queue whose budget is under one message took %d, want 1", got)
	}
}

// TestHSWorkWorkers: the first worker starts others while messages wait,
// up to maxWorkers, and each ends when it finds the queue empty.
func TestHSWorkWorkers(t *testing.T) {
	w := newHSWork(3, time.Second, 0)
	for i := range 10 {
		w.push(hsElemFrom(kindHello, i, true))
	}
	started := 0
	for w.moreWorkers() {
		started++
	}
	if started != 2 || w.peakWorkers() != 3 {
		t.Fatalf("started %d more, %d at once; want 2, 3", started, w.peakWorkers())
	}
	for range 10 {
		if _, _, ok := take(w, false); !ok {
			t.Fatal("a queued message was not there")
		}
	}
	if _, _, ok := w.pop(false); ok {
		t.Fatal("a message from an empty queue")
	}
	w.mu.Lock()
	n := w.workers
	w.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d workers after one found the queue empty, want 2", n)
	}
	if _, _, ok := w.pop(true); ok || w.workers != 2 {
		t.Fatalf("the first worker is never counted out: %d", w.workers)
	}
	if w.moreWorkers() {
		t.Fatal("another worker for an empty queue")
	}

	// The workers do not run ahead of the commits by more than
	// maxAhead: messages whose work is all in their commit would
	// otherwise leave the queue, and its bound, at once.
	w = newHSWork(1, time.Second, 0)
	for i := range 5 {
		w.push(hsElemFrom(kindV2, i, false))
	}
	var tickets []uint64
	for range w.maxAhead() {
		_, tk, ok := w.pop(true)
		if !ok {
			t.Fatal("a message refused under maxAhead")
		}
		tickets = append(tickets, tk)
	}
	if _, _, ok := w.pop(true); ok {
		t.Fatalf("a message taken with %d waiting for their commits", w.maxAhead())
	}
	<-w.wake // the pushes'
	w.finish(tickets[0], func() {})
	select {
	case <-w.wake:
	default:
		t.Fatal("a commit did not wake the first worker")
	}
	if _, _, ok := w.pop(true); !ok {
		t.Fatal("no message taken once a commit ran")
	}
}

// TestHSWorkCommitOrder: commits run one at a time, in the order of their
// tickets, whatever the order their messages were prepared in, each
// exactly once; and finish never waits for a commit of another's: the
// goroutine that finds the turn taken leaves its commit to the holder.
func TestHSWorkCommitOrder(t *testing.T) {
	w := newHSWork(4, time.Second, 0)
	const n = 200
	tickets := make([]uint64, n)
	for i := range tickets {
		tickets[i] = w.ticket()
	}
	var (
		mu      sync.Mutex
		order   []int
		running atomic.Int32
	)
	commit := func(i int) func() {
		return func() {
			if running.Add(1) != 1 {
				t.Error("two commits at once")
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			running.Add(-1)
		}
	}
	// The first ticket's commit blocks until released: every other
	// finish must return meanwhile, its commit waiting for its turn.
	release := make(chan struct{})
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		w.finish(tickets[0], func() { <-release; commit(0)() })
	}()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := n - 1 - g; i >= 1; i -= 4 { // prepared in reverse order
				w.finish(tickets[i], commit(i))
			}
		}()
	}
	returned := make(chan struct{})
	go func() { wg.Wait(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(waitLong):
		t.Fatal("finish waited for another's commit")
	}
	mu.Lock()
	if len(order) != 0 {
		t.Fatalf("%d commits ran before the first ticket's", len(order))
	}
	mu.Unlock()
	close(release)
	<-firstDone // the holder of the turn ran them all
	if len(order) != n {
		t.Fatalf("%d commits ran, want %d", len(order), n)
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("commit %d ran in place %d: %v", v, i, order[:i+1])
		}
	}
}

// TestHandshakeWorkersInParallel: a burst of hellos (and their final
// messages) from real initiators is worked by as many workers as
// GOMAXPROCS allows, every handshake completes, and the workers beyond
// the first end once the queue is empty.
func TestHandshakeWorkersInParallel(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("one worker at GOMAXPROCS 1")
	}
	srv := listenT(t, "udp4", "127.0.0.1:0", &Config{CookieThreshold: 1 << 20})
	n := scaled(40, 16)
	clients := make([]*Conn, n)
	for i := range clients {
		clients[i] = listenT(t, "udp4", "127.0.0.1:0", nil)
		<-clients[i].spare.done
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			errs[i] = c.Handshake(ctx, addrOf(srv))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if got := srv.Stats().Handshakes; got != uint64(n) {
		t.Errorf("server: %d handshakes, want %d", got, n)
	}
	peak := srv.hw.peakWorkers()
	t.Logf("%d handshakes at once: %d workers at most (GOMAXPROCS %d), %d hellos dropped", n, peak, runtime.GOMAXPROCS(0), srv.Stats().Drops.HandshakeQueueFull)
	if peak < 2 || peak > runtime.GOMAXPROCS(0) {
		t.Errorf("%d workers at once, want 2..%d", peak, runtime.GOMAXPROCS(0))
	}
	if _, ok := waitFor(waitLong, func() bool {
		srv.hw.mu.Lock()
		defer srv.hw.mu.Unlock()
		return srv.hw.workers == 1
	}); !ok {
		t.Error("the extra workers did not end with the queue empty")
	}
}

// estimate returns kind k's estimated cost (for tests).
func (w *hsWork) estimate(k hsKind) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.est[k]
}

// peakWorkers returns the most workers that ran at once (for tests).
func (w *hsWork) peakWorkers() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}
