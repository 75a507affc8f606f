package vaultudp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Pure tests of sealed datagrams: session.seal / open between the two
// sessions of one fixed handshake.

// sessSeal seals a copy of env under s and returns the datagram, in a
// buffer of its own.
func sessSeal(t testing.TB, s *session, env []byte) []byte {
	t.Helper()
	buf := make([]byte, sealedHeaderLen, sealedOverhead+len(env))
	buf = append(buf, env...)
	dg, err := s.seal(buf)
	if err != nil {
		t.Fatal(err)
	}
	return dg
}

// sessPair returns the initiator's and the responder's sessions of the
// fixed exchange of hsExchange.
func sessPair(t testing.TB) (a, b *session, x *hsExch) {
	t.Helper()
	x = hsExchange(t)
	a, err := newSession(x.aKeys, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err = newSession(x.bKeys, 0)
	if err != nil {
		t.Fatal(err)
	}
	return a, b, x
}

// sessOpen opens a copy of dg (open works in place).
func sessOpen(s *session, dg []byte) ([]byte, error) {
	return s.open(bytes.Clone(dg))
}

// TestSealedFormat: the header is version, type, two zero bytes, the
// receiver's index and the counter, big endian; counters start at 0 and
// count up; the overhead is exactly 32 bytes; the nonce is the counter.
func TestSealedFormat(t *testing.T) {
	parallel(t)
	a, b, x := sessPair(t)
	env := []byte("an envelope")
	for want := uint64(0); want < 3; want++ {
		dg := sessSeal(t, a, env)
		if len(dg) != len(env)+32 || sealedOverhead != 32 {
			t.Fatalf("overhead %d, want 32", len(dg)-len(env))
		}
		if dg[0] != ProtocolVersion || dg[1] != typeSealed || dg[2] != 0 || dg[3] != 0 {
			t.Fatalf("header % x", dg[:4])
		}
		if idx := binary.BigEndian.Uint32(dg[4:]); idx != hsRespIndex {
			t.Fatalf("receiver index %x, want %x", idx, hsRespIndex)
		}
		if c := binary.BigEndian.Uint64(dg[8:]); c != want {
			t.Fatalf("counter %d, want %d", c, want)
		}
		// Recompute with the AEAD directly: key = the direction's key,
		// nonce = 4 zero bytes || counter, additional data = the header.
		aead, _ := chacha20poly1305.New(x.aKeys.send[:])
		var nonce [12]byte
		binary.BigEndian.PutUint64(nonce[4:], want)
		if ref := aead.Seal(bytes.Clone(dg[:16]), nonce[:], env, dg[:16]); !bytes.Equal(ref, dg) {
			t.Fatal("sealed datagram differs from ChaCha20-Poly1305 with the counter as nonce")
		}
		if got, err := sessOpen(b, dg); err != nil || !bytes.Equal(got, env) {
			t.Fatalf("open = %q, %v", got, err)
		}
	}
	// A buffer without room for the tag still seals correctly (in a
	// grown copy) instead of panicking.
	tight := append(make([]byte, sealedHeaderLen), env...)
	tight = tight[:len(tight):len(tight)]
	dg0, err := a.seal(tight)
	if err != nil || len(dg0) != len(env)+sealedOverhead {
		t.Fatalf("seal into a full buffer: %d bytes, %v", len(dg0), err)
	}
	if got, err := sessOpen(b, dg0); err != nil || !bytes.Equal(got, env) {
		t.Fatalf("open of a datagram sealed into a full buffer = %q, %v", got, err)
	}
	// An empty envelope is still sealed and authenticated.
	dg := sessSeal(t, a, nil)
	if len(dg) != sealedOverhead {
		t.Fatalf("empty envelope sealed to %d bytes", len(dg))
	}
	if got, err := sessOpen(b, dg); err != nil || len(got) != 0 {
		t.Fatalf("empty envelope opened to %q, %v", got, err)
	}
}

// TestSealedIndex: sealedIndex accepts only sealed datagrams of plausible
// length with zero reserved bytes.
func TestSealedIndex(t *testing.T) {
	parallel(t)
	a, _, _ := sessPair(t)
	dg := sessSeal(t, a, []byte("x"))
	if idx, ok := sealedIndex(dg); !ok || idx != hsRespIndex {
		t.Fatalf("sealedIndex = %x, %v", idx, ok)
	}
	for n := 0; n < sealedOverhead; n++ {
		if _, ok := sealedIndex(dg[:n]); ok {
			t.Fatalf("sealedIndex accepted %d bytes", n)
		}
	}
	for i, v := range map[int]byte{0: 2, 1: typeOpen, 2: 1, 3: 0x80} {
		b := bytes.Clone(dg)
		b[i] = v
		if _, ok := sealedIndex(b); ok {
			t.Fatalf("sealedIndex accepted byte %d = %d", i, v)
		}
	}
}

// TestSealedReplayed: a datagram opens once; its replay, and a replay of
// any earlier one, is refused; reordering within the window is fine; a
// counter older than the window is refused.
func TestSealedReplayed(t *testing.T) {
	parallel(t)
	a, b, _ := sessPair(t)
	var dgs [][]byte
	for i := 0; i < 5; i++ {
		dgs = append(dgs, sessSeal(t, a, []byte{byte(i)}))
	}
	for _, i := range []int{0, 2, 1, 4, 3} { // reordered
		if _, err := sessOpen(b, dgs[i]); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
	for i := range dgs {
		if _, err := sessOpen(b, dgs[i]); !errors.Is(err, errReplay) {
			t.Fatalf("replay of datagram %d: err = %v, want errReplay", i, err)
		}
	}
	// Too old: once the window has moved replayWindowSize past it, a
	// datagram never seen is refused too.
	old := sessSeal(t, a, []byte("late")) // counter 5
	a.sendCounter.Store(5 + replayWindowSize)
	if _, err := sessOpen(b, sessSeal(t, a, []byte("new"))); err != nil {
		t.Fatal(err)
	}
	if _, err := sessOpen(b, old); !errors.Is(err, errReplay) {
		t.Fatalf("datagram older than the window: err = %v, want errReplay", err)
	}
}

// TestSealedTampered: every byte position flipped once (every bit, for a
// short datagram; all bits of a byte at once, for a long one), header and
// tag included, never opens; and the forgeries do not move the replay
// window, so the genuine datagram still opens afterwards.
func TestSealedTampered(t *testing.T) {
	parallel(t)
	a, b, _ := sessPair(t)
	for _, size := range []int{0, 1, 100, 1200} {
		env := bytes.Repeat([]byte{0x5a}, size)
		a.sendCounter.Store(uint64(size) * 1000) // far ahead of what b has seen
		dg := sessSeal(t, a, env)
		masks := []byte{0xff}
		if size <= 100 {
			masks = []byte{1, 2, 4, 8, 16, 32, 64, 128}
		}
		for i := range dg {
			for _, m := range masks {
				f := bytes.Clone(dg)
				f[i] ^= m
				if got, err := b.open(f); err == nil {
					t.Fatalf("size %d: byte %d ^ %#x opened to %q", size, i, m, got)
				}
			}
		}
		// A forged far-future counter did not slide the window.
		if got, err := sessOpen(b, dg); err != nil || !bytes.Equal(got, env) {
			t.Fatalf("size %d: the genuine datagram after the forgeries: %v", size, err)
		}
	}
}

// TestSealedTruncated: every prefix of a datagram, and the datagram with
// bytes appended, never opens and never panics.
func TestSealedTruncated(t *testing.T) {
	parallel(t)
	a, b, _ := sessPair(t)
	dg := sessSeal(t, a, bytes.Repeat([]byte{7}, 64))
	for n := 0; n < len(dg); n++ {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("open of %d of %d bytes panicked: %v", n, len(dg), r)
				}
			}()
			if got, err := b.open(bytes.Clone(dg[:n])); err == nil {
				t.Fatalf("open of %d of %d bytes succeeded: %q", n, len(dg), got)
			}
		}()
	}
	if _, err := b.open(append(bytes.Clone(dg), 0)); err == nil {
		t.Fatal("a datagram with a byte appended opened")
	}
	if _, err := sessOpen(b, dg); err != nil {
		t.Fatalf("the whole datagram: %v", err)
	}
}

// TestSealedCounterLimit: a session that has used its counters refuses
// to seal (and stays refusing, never wrapping), and open refuses counters
// at or past the limit even when authentic.
func TestSealedCounterLimit(t *testing.T) {
	parallel(t)
	a, b, x := sessPair(t)
	a.sendCounter.Store(counterLimit - 1)
	last := sessSeal(t, a, []byte("last"))
	if c := binary.BigEndian.Uint64(last[8:]); c != counterLimit-1 {
		t.Fatalf("last counter %d", c)
	}
	if _, err := sessOpen(b, last); err != nil {
		t.Fatalf("counter limit-1: %v", err)
	}
	for i := 0; i < 3; i++ {
		buf := make([]byte, sealedHeaderLen+4, sealedOverhead+4)
		if _, err := a.seal(buf); !errors.Is(err, ErrNoSession) {
			t.Fatalf("seal past the limit: err = %v, want ErrNoSession", err)
		}
	}
	if c := a.sendCounter.Load(); c != counterLimit {
		t.Fatalf("sendCounter = %d after refusals, want counterLimit", c)
	}

	// Authentic datagrams with counters counterLimit, ..., 2^64-1, sealed
	// with the AEAD directly.
	aead, _ := chacha20poly1305.New(x.aKeys.send[:])
	for _, c := range []uint64{counterLimit, counterLimit + 1, ^uint64(0)} {
		hdr := make([]byte, sealedHeaderLen)
		putSealedHeader(hdr, hsRespIndex, c)
		var nonce [12]byte
		binary.BigEndian.PutUint64(nonce[4:], c)
		dg := aead.Seal(hdr, nonce[:], []byte("x"), hdr)
		if _, err := sessOpen(b, dg); !errors.Is(err, errReplay) {
			t.Fatalf("counter %d: err = %v, want errReplay", c, err)
		}
	}
}

// TestSealedWrongDirection: each direction has its own key, so a
// datagram does not open with its sender's own receive key (a reflected
// datagram), nor under another session.
func TestSealedWrongDirection(t *testing.T) {
	parallel(t)
	a, b, _ := sessPair(t)
	fromA := sessSeal(t, a, []byte("from A"))
	fromB := sessSeal(t, b, []byte("from B"))
	if _, err := sessOpen(a, fromA); !errors.Is(err, errAuth) {
		t.Fatalf("A's datagram opened by A: err = %v", err)
	}
	if _, err := sessOpen(b, fromB); !errors.Is(err, errAuth) {
		t.Fatalf("B's datagram opened by B: err = %v", err)
	}
	// Another session between the same identities.
	other, _ := newSession(hsExchange(t).bKeys, 0)
	if _, err := sessOpen(other, fromA); !errors.Is(err, errAuth) {
		t.Fatalf("A's datagram opened under another session: err = %v", err)
	}
	// The right receivers still open them.
	if _, err := sessOpen(b, fromA); err != nil {
		t.Fatal(err)
	}
	if _, err := sessOpen(a, fromB); err != nil {
		t.Fatal(err)
	}
}

// TestSealedConcurrent: concurrent senders never reuse a counter, and the
// receiver, opening concurrently out of order, accepts each datagram once.
func TestSealedConcurrent(t *testing.T) {
	parallel(t)
	a, b, _ := sessPair(t)
	const workers, each = 8, 500 // 4000 < replayWindowSize: all within the window
	dgs := make([][]byte, workers*each)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				buf := make([]byte, sealedHeaderLen, sealedOverhead+8)
				buf = binary.BigEndian.AppendUint64(buf, uint64(w*each+i))
				dg, err := a.seal(buf)
				if err != nil {
					t.Error(err)
					return
				}
				dgs[w*each+i] = dg
			}
		}()
	}
	wg.Wait()
	seen := make(map[uint64]bool)
	for _, dg := range dgs {
		c := binary.BigEndian.Uint64(dg[8:])
		if seen[c] {
			t.Fatalf("counter %d used twice", c)
		}
		seen[c] = true
	}
	var opened sync.Map
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every worker tries every datagram, from its own offset.
			for i := range dgs {
				dg := dgs[(i+w*97)%len(dgs)]
				if env, err := sessOpen(b, dg); err == nil {
					if _, dup := opened.LoadOrStore(binary.BigEndian.Uint64(env), true); dup {
						t.Errorf("datagram %d opened twice", binary.BigEndian.Uint64(env))
					}
				} else if !errors.Is(err, errReplay) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	n := 0
	opened.Range(func(_, _ any) bool { n++; return true })
	if n != len(dgs) {
		t.Fatalf("%d of %d datagrams opened", n, len(dgs))
	}
}

// TestSealedNoAllocs: seal and open work in the caller's buffer.
func TestSealedNoAllocs(t *testing.T) {
	a, b, _ := sessPair(t)
	buf := make([]byte, sealedHeaderLen+1200, sealedOverhead+1200)
	dg := sessSeal(t, a, buf[sealedHeaderLen:])
	work := make([]byte, len(dg))
	if n := testing.AllocsPerRun(100, func() {
		if _, err := a.seal(buf[:sealedHeaderLen+1200]); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("seal: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		copy(work, dg)
		b.open(work)
		b.mu.Lock()
		b.replay.reset()
		b.mu.Unlock()
	}); n != 0 {
		t.Fatalf("open: %v allocations", n)
	}
}

// TestSealedRejectAfter: sessions are renewed after the key lifetime and
// refused after 1.5 times it (wireguard-go's 120 s / 180 s). The Conn
// applies it; here the arithmetic.
func TestSealedRejectAfter(t *testing.T) {
	parallel(t)
	if got := rejectAfter(120 * time.Second); got != 180*time.Second {
		t.Fatalf("rejectAfter(120s) = %v", got)
	}
	if rekeyAfterMessages >= counterLimit {
		t.Fatal("rekey after the counter limit")
	}
}

var sessBenchSizes = []int{64, 512, 1200}

// BenchmarkSeal: one datagram sealed in place, per envelope size.
func BenchmarkSeal(b *testing.B) {
	for _, n := range sessBenchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			a, _, _ := sessPair(b)
			buf := make([]byte, sealedHeaderLen+n, sealedOverhead+n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := a.seal(buf[:sealedHeaderLen+n]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen: one datagram authenticated, decrypted in place and
// checked against the replay window, per envelope size. Datagrams with
// fresh counters are sealed ahead in batches, untimed.
func BenchmarkOpen(b *testing.B) {
	const batch = 1024
	for _, n := range sessBenchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			a, r, _ := sessPair(b)
			pristine := make([][]byte, batch)
			work := make([][]byte, batch)
			for i := range pristine {
				pristine[i] = sessSeal(b, a, make([]byte, n))
				work[i] = make([]byte, len(pristine[i]))
			}
			refill := func() {
				for i := range work {
					copy(work[i], pristine[i])
				}
				r.mu.Lock()
				r.replay.reset()
				r.mu.Unlock()
			}
			refill()
			b.SetBytes(int64(n))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % batch
				if j == 0 && i > 0 {
					b.StopTimer()
					refill()
					b.StartTimer()
				}
				if _, err := r.open(work[j]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
