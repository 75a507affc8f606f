package vaultudp

import (
	"math"
	"math/rand/v2"
	"testing"
)

// replayVerdict is the reference model's reason for its answer.
type replayVerdict int

const (
	replayFresh replayVerdict = iota
	replayDuplicate
	replayTooOld
	replayOverLimit
)

func (v replayVerdict) String() string {
	return [...]string{"fresh", "duplicate", "too old", "over limit"}[v]
}

// replayModel is the reference replayWindow is checked against: the set of
// every counter ever accepted, with no bitmap and no ring. A counter is fresh
// iff it is below counterLimit, was never accepted, and is greater than
// highest-replayWindowSize (highest being the highest accepted so far).
type replayModel struct {
	seen    map[uint64]bool
	highest uint64 // 0 while nothing has been accepted
	started bool   // whether anything has been accepted
}

func newReplayModel() *replayModel {
	return &replayModel{seen: make(map[uint64]bool)}
}

func (m *replayModel) check(c uint64) replayVerdict {
	switch {
	case c >= counterLimit:
		return replayOverLimit
	case m.seen[c]:
		return replayDuplicate
	// c > highest-replayWindowSize, written as an addition so that it cannot
	// underflow; c < counterLimit, so c+replayWindowSize cannot overflow.
	case m.started && c+replayWindowSize <= m.highest:
		return replayTooOld
	}
	m.seen[c] = true
	if !m.started || c > m.highest {
		m.highest, m.started = c, true
	}
	return replayFresh
}

type replayStep struct {
	c  uint64
	ok bool
}

func expectReplay(t testing.TB, w *replayWindow, c uint64, want bool) {
	t.Helper()
	if got := w.checkAndUpdate(c); got != want {
		t.Fatalf("checkAndUpdate(%d) = %v, want %v (last %d)", c, got, want, w.last)
	}
}

func TestReplayConstants(t *testing.T) {
	parallel(t)
	if counterLimit != math.MaxUint64-1<<13 {
		t.Errorf("counterLimit = %d, want 2^64 - 2^13 - 1 = %d", counterLimit, uint64(math.MaxUint64-1<<13))
	}
	if replayWindowSize != 4032 {
		t.Errorf("replayWindowSize = %d, want 4032 (PROTOCOL.md 5.8)", replayWindowSize)
	}
}

func TestReplayInOrder(t *testing.T) {
	parallel(t)
	var w replayWindow
	const n = 3 * replayRingBlocks * replayBlockBits // several laps of the ring
	for c := uint64(0); c < n; c++ {
		expectReplay(t, &w, c, true)
	}
	// Replaying the whole stream: the tail is a duplicate, the rest too old.
	for c := uint64(0); c < n; c++ {
		expectReplay(t, &w, c, false)
	}
	expectReplay(t, &w, n, true) // and the stream goes on
}

func TestReplaySequences(t *testing.T) {
	parallel(t)
	reversed := func(hi uint64) []replayStep { // hi, hi-1, ..., 0, all fresh
		var s []replayStep
		for c := hi; ; c-- {
			s = append(s, replayStep{c, true})
			if c == 0 {
				return s
			}
		}
	}
	tests := []struct {
		name  string
		steps []replayStep
	}{
		{"zero once", []replayStep{{0, true}, {0, false}, {1, true}, {0, false}, {1, false}}},
		{"adjacent swaps", []replayStep{{1, true}, {0, true}, {3, true}, {2, true}, {2, false}, {3, false}, {0, false}}},
		{"gap filled across block boundaries", []replayStep{
			{0, true}, {130, true}, {64, true}, {63, true}, {65, true}, {129, true}, {128, true}, {127, true},
			{64, false}, {130, false}, {128, false}, {131, true},
		}},
		{"late packets behind the highest", []replayStep{
			{10, true}, {2500, true}, {10, false}, {11, true}, {2499, true}, {9, true}, {2501, true}, {2499, false},
		}},
		{"duplicate of the highest", []replayStep{{100, true}, {100, false}, {99, true}, {100, false}}},
		{"duplicate deep in the window", []replayStep{{7, true}, {4000, true}, {7, false}, {8, true}, {8, false}}},
		{"whole window in reverse, then slide one", append(reversed(replayWindowSize-1),
			replayStep{0, false}, replayStep{replayWindowSize - 1, false},
			replayStep{replayWindowSize, true}, // now 0 is exactly replayWindowSize behind: too old
			replayStep{0, false}, replayStep{1, false}, replayStep{replayWindowSize + 1, true},
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w replayWindow
			for i, s := range tt.steps {
				if got := w.checkAndUpdate(s.c); got != s.ok {
					t.Fatalf("step %d: checkAndUpdate(%d) = %v, want %v", i, s.c, got, s.ok)
				}
			}
		})
	}
}

func TestReplayDuplicate(t *testing.T) {
	parallel(t)
	// Each counter alone in a fresh window: accepted once, then never again.
	for _, c := range []uint64{0, 1, 63, 64, 65, 127, 128, replayWindowSize - 1, replayWindowSize,
		8191, 8192, 1 << 32, 1<<63 + 12345, counterLimit - 1} {
		var w replayWindow
		expectReplay(t, &w, c, true)
		for range 3 {
			expectReplay(t, &w, c, false)
		}
	}

	// Every counter of 0..999 sent three times in a shuffled order, all within
	// one window: each is accepted exactly once.
	const n = 1000
	var sends []uint64
	for c := range uint64(n) {
		sends = append(sends, c, c, c)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(sends), func(i, j int) { sends[i], sends[j] = sends[j], sends[i] })
	var w replayWindow
	accepted := make([]int, n)
	for _, c := range sends {
		if w.checkAndUpdate(c) {
			accepted[c]++
		}
	}
	for c, k := range accepted {
		if k != 1 {
			t.Errorf("counter %d accepted %d times, want 1", c, k)
		}
	}
}

func TestReplayWindowEdge(t *testing.T) {
	parallel(t)
	// h is the highest counter accepted; the oldest counter still in the
	// window is h-replayWindowSize+1 and h-replayWindowSize is the first too
	// old. The cases put h at various offsets within a block, because the
	// window's trailing edge then falls at various offsets too.
	for _, h := range []uint64{
		replayWindowSize - 1, // oldest in window is 0
		replayWindowSize,     // 0 is just too old
		10000,
		64 * 200,    // h at the start of a block
		64*200 + 63, // h at the end of a block: the window is exactly 63 blocks
		64*200 + 17, // the window straddles 64 blocks
		1e12 + 5,
		counterLimit - 1,
	} {
		oldest := h - replayWindowSize + 1
		var w replayWindow
		expectReplay(t, &w, h, true)
		expectReplay(t, &w, oldest, true)  // exactly at the edge: in
		expectReplay(t, &w, oldest, false) // and only once
		if oldest >= 1 {
			expectReplay(t, &w, oldest-1, false) // one past the edge: too old, never seen
		}
		if oldest >= 2 {
			expectReplay(t, &w, oldest-2, false)
		}
		expectReplay(t, &w, oldest+1, true)
		// One more step forward pushes oldest out, and oldest+1 becomes the edge.
		if h+1 < counterLimit {
			expectReplay(t, &w, h+1, true)
			expectReplay(t, &w, oldest+2, true)
			expectReplay(t, &w, oldest+1, false)
		}
	}
}

func TestReplayFarFutureJump(t *testing.T) {
	parallel(t)
	// Fill the whole ring with counters 0..base, jump forward by j, then
	// check every counter around the new window: those ring slots that now
	// stand for new counters must have been cleared, the rest kept.
	const base = replayRingBlocks*replayBlockBits - 1
	for _, j := range []uint64{1, 63, 64, 65, 3000, replayWindowSize - 1, replayWindowSize,
		replayWindowSize + 1, 8191, 8192, 8193, 3 * 8192, 1e6, 1 << 40, counterLimit - 1 - base} {
		var w replayWindow
		for c := uint64(0); c <= base; c++ {
			expectReplay(t, &w, c, true)
		}
		h := base + j
		expectReplay(t, &w, h, true)
		for _, c := range []uint64{0, 1, base / 2, base} {
			expectReplay(t, &w, c, false) // seen, or too old
		}
		lo := h - replayWindowSize - 2
		if h < replayWindowSize+2 {
			lo = 0
		}
		for c := lo; c <= h; c++ {
			fresh := c > base && c != h && h-c < replayWindowSize
			expectReplay(t, &w, c, fresh)
			if fresh {
				expectReplay(t, &w, c, false)
			}
		}
		if h+1 < counterLimit {
			expectReplay(t, &w, h+1, true)
		}
	}
}

func TestReplayCounterLimit(t *testing.T) {
	parallel(t)
	for _, tt := range []replayStep{
		{counterLimit - 1, true},
		{counterLimit, false},
		{counterLimit + 1, false},
		{math.MaxUint64 - 1, false},
		{math.MaxUint64, false},
	} {
		var w replayWindow
		expectReplay(t, &w, tt.c, tt.ok)
	}

	// A rejected over-limit counter must not slide the window.
	var w replayWindow
	expectReplay(t, &w, 100, true)
	expectReplay(t, &w, counterLimit, false)
	expectReplay(t, &w, math.MaxUint64, false)
	expectReplay(t, &w, 1, true) // would be too old had the window moved

	// Right up against the limit.
	w.reset()
	for _, s := range []replayStep{
		{counterLimit - 2, true}, {counterLimit - 1, true}, {counterLimit - 1, false}, {counterLimit, false},
		{counterLimit - 3, true}, {counterLimit - 2, false},
		{counterLimit - replayWindowSize, true}, {counterLimit - 1 - replayWindowSize, false},
	} {
		expectReplay(t, &w, s.c, s.ok)
	}
}

func TestReplayReset(t *testing.T) {
	parallel(t)
	var w replayWindow
	for c := uint64(0); c < 100; c++ {
		expectReplay(t, &w, c, true)
	}
	expectReplay(t, &w, 1e6, true)
	w.reset()
	if w != (replayWindow{}) {
		t.Fatal("reset did not return the window to its zero value")
	}
	for _, s := range []replayStep{{0, true}, {0, false}, {50, true}, {1e6, true}, {1e6, false}, {99, false}} {
		expectReplay(t, &w, s.c, s.ok)
	}
}

func TestReplayNoAllocs(t *testing.T) {
	var w replayWindow
	var c uint64
	if n := testing.AllocsPerRun(1000, func() {
		w.checkAndUpdate(c)
		w.checkAndUpdate(c) // duplicate
		c += 100
	}); n != 0 {
		t.Errorf("checkAndUpdate allocates %v times per run, want 0", n)
	}
}

// TestReplayMatchesModel drives a window and the model with the same long
// pseudo-random mix of steps, jumps, edge probes and limit probes, in
// episodes that each start from a reset window.
func TestReplayMatchesModel(t *testing.T) {
	parallel(t)
	rng := rand.New(rand.NewPCG(0x7265706c6179, 42)) // fixed seed: reproducible
	var w replayWindow
	m := newReplayModel()
	var verdicts [4]int
	var c uint64
	const steps = 200_000
	for i := range steps {
		if rng.IntN(3000) == 0 { // new episode; once near the limit, forward progress stops
			w.reset()
			m, c = newReplayModel(), 0
		}
		switch r := rng.IntN(100); {
		case r < 40: // mostly forward, small steps
			c += uint64(rng.IntN(8))
		case r < 60: // reordering: somewhat behind
			c -= uint64(rng.IntN(200))
		case r < 75: // anywhere in or just behind the window
			c = m.highest - uint64(rng.IntN(2*replayWindowSize))
		case r < 85: // the window's trailing edge
			c = m.highest - replayWindowSize - 2 + uint64(rng.IntN(5))
		case r < 93: // slide forward by up to a few laps of the ring
			c = m.highest + uint64(rng.IntN(4*replayRingBlocks*replayBlockBits))
		case r < 95: // far-future jump
			c += uint64(rng.Int64N(1 << 40))
		case r < 97: // at the hard limit
			c = counterLimit - 3 + uint64(rng.IntN(6))
		case r < 98:
			c = rng.Uint64()
		default: // back to the start
			c = uint64(rng.IntN(1000))
		}
		want := m.check(c)
		verdicts[want]++
		if got := w.checkAndUpdate(c); got != (want == replayFresh) {
			t.Fatalf("step %d: checkAndUpdate(%d) = %v, model says %v (highest %d)", i, c, got, want, m.highest)
		}
	}
	// The mix must have exercised every verdict, or this test proves little.
	for v, n := range verdicts {
		if n < steps/500 {
			t.Errorf("only %d of %d steps were %v", n, steps, replayVerdict(v))
		}
	}
	t.Logf("verdicts: fresh %d, duplicate %d, too old %d, over limit %d", verdicts[0], verdicts[1], verdicts[2], verdicts[3])
}

func BenchmarkReplayCheck(b *testing.B) {
	b.Run("in-order", func(b *testing.B) {
		b.ReportAllocs()
		var w replayWindow
		var c uint64
		for b.Loop() {
			if !w.checkAndUpdate(c) {
				b.Fatalf("counter %d rejected", c)
			}
			c++
		}
	})
	b.Run("reordered", func(b *testing.B) {
		// Chunks of 1024 counters, each chunk in a shuffled order: every
		// counter is fresh, but most arrive behind the highest.
		const chunk = 1024
		perm := rand.New(rand.NewPCG(3, 4)).Perm(chunk)
		b.ReportAllocs()
		var w replayWindow
		var i uint64
		for b.Loop() {
			c := i&^(chunk-1) + uint64(perm[i&(chunk-1)])
			if !w.checkAndUpdate(c) {
				b.Fatalf("counter %d rejected", c)
			}
			i++
		}
	})
	b.Run("duplicate", func(b *testing.B) {
		b.ReportAllocs()
		var w replayWindow
		w.checkAndUpdate(1000)
		for b.Loop() {
			if w.checkAndUpdate(1000) {
				b.Fatal("duplicate accepted")
			}
		}
	})
	b.Run("far-jump", func(b *testing.B) {
		// The worst case: every check clears the whole ring.
		b.ReportAllocs()
		var w replayWindow
		var c uint64
		for b.Loop() {
			if !w.checkAndUpdate(c) {
				b.Fatalf("counter %d rejected", c)
			}
			c += 1 << 20
		}
	})
}

// reset empties the window, as for a new session: afterwards every counter
// below counterLimit is fresh again. Tests only: a session never reuses a window.
func (w *replayWindow) reset() {
	*w = replayWindow{}
}
