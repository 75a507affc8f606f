package vaultudp

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/vaulttest"
)

var soakFor = flag.Duration("soak", 0, "run TestSoak for this long (go test -run Soak -soak=10m -timeout 0); 0 skips it")

// TestSoak runs 20 Conns over the in-memory network for -soak, each
// sending to three others (60 flows of 50 datagrams/s), with sessions
// renewed every 3 s and faults on every path (5% loss, 5% duplication,
// 5% reordering, 0.5% bit flips, 0.5% truncation). It checks what the
// fault tests check, for as long as asked:
//
//   - every datagram delivered was sent, intact, and is delivered once
//     (checked on delivery, by traffic);
//   - no loss beyond the injected loss: every datagram written and not
//     delivered was destroyed on the path (dropped or damaged), or dropped
//     by its sender, counted, when a handshake failed;
//   - rekeys keep happening on every Conn;
//   - memory stays flat: the live heap, sampled after a GC every few
//     seconds, must not keep growing once warm.
//
// The faults come from soakFaults rather than vaulttest.FaultyConn, which
// records every datagram (meant for tests, not for long runs) and would
// itself grow the heap.
func TestSoak(t *testing.T) {
	if *soakFor <= 0 {
		t.Skip("opt-in: go test -run Soak -soak=10m -timeout 0")
	}
	const (
		nodes   = 20
		perFlow = 50 // datagrams/s
	)
	dur := *soakFor
	if dl, ok := t.Deadline(); ok && time.Until(dl)-30*time.Second < dur {
		dur = max(time.Until(dl)-30*time.Second, time.Second)
		t.Logf("shortened to %v to fit -timeout (use -timeout 0 for the full %v)", dur.Round(time.Second), *soakFor)
	}
	every := min(5*time.Second, max(dur/20, time.Second))
	warm := min(30*time.Second, dur/4)
	cfg := &Config{MTU: 1500, KeyLifetime: 3 * time.Second, HandshakeTimeout: time.Second, Padding: PadNone}
	nw := &vaulttest.Network{QueueLen: 4096}
	tr := newTraffic(t, perFlow, 1200)
	var (
		ns     []*tnode
		faults []*soakFaults
		eps    []*vaulttest.PacketConn
		addrs  []netip.AddrPort
	)
	for i := range nodes {
		ep := listenMem(t, nw, fmt.Sprintf("10.2.0.%d:1000", i+1))
		sf := newSoakFaults(ep, uint64(i+1))
		c := wrapT(t, sf, cfg)
		ns, faults, eps, addrs = append(ns, tr.node(uint16(i+1), c)), append(faults, sf), append(eps, ep), append(addrs, memAddr(ep))
	}
	for i := range nodes {
		for _, d := range []int{1, 2, 5} {
			j := (i + d) % nodes
			tr.flow(ns[i], ns[j], addrs[j], addrs[i])
		}
	}
	start := time.Now()
	tr.start()

	var heap []uint64
	var at []time.Duration
	tk := time.NewTicker(every)
	for time.Since(start) < dur {
		<-tk.C
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap, at = append(heap, ms.HeapAlloc), append(at, time.Since(start))
		written, delivered, _ := tr.totals(nil)
		var rekeys uint64
		for _, n := range ns {
			rekeys += n.c.Stats().Rekeys
		}
		t.Logf("%v: live heap %s, %d goroutines; %d written, %d delivered, %d rekeys",
			at[len(at)-1].Round(time.Second), mib(ms.HeapAlloc), runtime.NumGoroutine(), written, delivered, rekeys)
		if errs := tr.failures(); len(errs) > 0 {
			break
		}
	}
	tk.Stop()
	tr.stopSending()
	for _, f := range faults {
		f.Flush()
	}
	tr.finish(time.Second, waitLong)
	tr.check()

	// Loss, explained.
	written, delivered, refused := tr.totals(nil)
	var destroyed, hsDrops, queueFull, epDrops, unknown, rekeys int64
	var fc soakCounts
	minRekeys := uint64(1 << 62)
	for i, n := range ns {
		s := n.c.Stats()
		hsDrops += int64(s.Drops.HandshakeTimeout)
		queueFull += int64(s.Drops.QueueFull)
		unknown += int64(s.Drops.UnknownSession)
		rekeys += int64(s.Rekeys)
		minRekeys = min(minRekeys, s.Rekeys)
		epDrops += int64(eps[i].Stats().Dropped)
		c := faults[i].counts()
		destroyed += int64(c.destroyed)
		fc.add(c)
	}
	lost := written - delivered
	explained := destroyed + hsDrops + queueFull + epDrops
	t.Logf("%d nodes, %d flows, %v: written %d, delivered %d (%.2f%%), refused %d; lost %d: destroyed on the path %d, dropped at failed handshakes %d, queues full %d+%d; unexplained %d; receivers' unknown-session drops %d (damaged indexes included)",
		nodes, len(tr.flows), time.Since(start).Round(time.Second), written, delivered, 100*float64(delivered)/float64(max(written, 1)),
		refused, lost, destroyed, hsDrops, queueFull, epDrops, lost-explained, unknown)
	t.Logf("faults %+v; rekeys %d (at least %d per Conn)", fc, rekeys, minRekeys)
	if w := tr.writeErrors(); w != "" {
		t.Logf("writes refused: %s", w)
	}
	if lost > explained+max(5, written/10000) {
		t.Errorf("%d datagrams lost beyond the %d the faults and failed handshakes explain", lost-explained, explained)
	}
	if want := uint64(dur / cfg.KeyLifetime / 2); minRekeys < want {
		t.Errorf("a Conn rekeyed %d times in %v, want at least %d", minRekeys, dur, want)
	}

	// Flat memory: the trend of the live heap once warm, by least
	// squares, must not add more than a fifth over the run (and 4 MiB).
	var xs, ys []float64
	for i := range heap {
		if at[i] >= warm {
			xs, ys = append(xs, at[i].Seconds()), append(ys, float64(heap[i]))
		}
	}
	if len(xs) >= 4 {
		slope, mean := trend(xs, ys)
		growth := slope * (xs[len(xs)-1] - xs[0])
		t.Logf("live heap once warm: mean %s, trend %+.1f KiB/s (%s over %.0f s)", mib(uint64(mean)), slope/1024, signedMiB(growth), xs[len(xs)-1]-xs[0])
		if growth > mean/5+4<<20 {
			t.Errorf("the live heap keeps growing: %s over the run, from a mean of %s", signedMiB(growth), mib(uint64(mean)))
		}
	}
}

func signedMiB(v float64) string { return fmt.Sprintf("%+.1f MiB", v/(1<<20)) }

// trend returns the least-squares slope of ys over xs, and ys' mean.
func trend(xs, ys []float64) (slope, mean float64) {
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	mx /= float64(len(xs))
	my /= float64(len(ys))
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	if den == 0 {
		return 0, my
	}
	return num / den, my
}

// soakFaults injects faults into what a Conn writes, as a FaultyConn does
// (drop, duplicate, hold back past the next datagram, flip a bit,
// truncate), from a seeded generator, but only counts them: nothing is
// recorded, so that a long run keeps a flat heap. It counts, by
// destination, the sealed data datagrams destroyed (dropped, or damaged
// in every copy). It has exactly the methods of net.PacketConn.
type soakFaults struct {
	pc *vaulttest.PacketConn

	mu   sync.Mutex
	rng  *rand.Rand
	held *soakHeld
	c    soakCounts
}

type soakHeld struct {
	b      []byte
	addr   net.Addr
	copies int
}

type soakCounts struct {
	writes, dropped, duplicated, reordered, corrupted, truncated int
	destroyed                                                    int // sealed data datagrams dropped or damaged
}

func (c *soakCounts) add(o soakCounts) {
	c.writes += o.writes
	c.dropped += o.dropped
	c.duplicated += o.duplicated
	c.reordered += o.reordered
	c.corrupted += o.corrupted
	c.truncated += o.truncated
	c.destroyed += o.destroyed
}

const (
	soakDrop      = 0.05
	soakDuplicate = 0.05
	soakReorder   = 0.05
	soakCorrupt   = 0.005
	soakTruncate  = 0.005
)

func newSoakFaults(pc *vaulttest.PacketConn, seed uint64) *soakFaults {
	return &soakFaults{pc: pc, rng: rand.New(rand.NewPCG(seed, 0x736f616b))}
}

func (f *soakFaults) WriteTo(b []byte, addr net.Addr) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.c.writes++
	r := f.rng
	drop, trunc, corrupt, dup, reorder := r.Float64(), r.Float64(), r.Float64(), r.Float64(), r.Float64()
	data := isSealedData(b)
	if drop < soakDrop {
		f.c.dropped++
		if data {
			f.c.destroyed++
		}
		return len(b), nil
	}
	out, damaged := b, false
	if len(out) > 0 && trunc < soakTruncate {
		out, damaged = out[:r.IntN(len(out))], true
		f.c.truncated++
	}
	if len(out) > 0 && corrupt < soakCorrupt {
		out = append([]byte(nil), out...)
		bit := r.IntN(8 * len(out))
		out[bit/8] ^= 1 << (bit % 8)
		damaged = true
		f.c.corrupted++
	}
	if damaged && data {
		f.c.destroyed++
	}
	copies := 1
	if dup < soakDuplicate {
		copies = 2
		f.c.duplicated++
	}
	if f.held == nil && reorder < soakReorder {
		f.held = &soakHeld{b: append([]byte(nil), out...), addr: addr, copies: copies}
		f.c.reordered++
		return len(b), nil
	}
	var err error
	for range copies {
		if _, e := f.pc.WriteTo(out, addr); e != nil && err == nil {
			err = e
		}
	}
	f.flushLocked()
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

func (f *soakFaults) flushLocked() {
	if h := f.held; h != nil {
		f.held = nil
		for range h.copies {
			f.pc.WriteTo(h.b, h.addr)
		}
	}
}

// Flush sends the datagram held back, if any.
func (f *soakFaults) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushLocked()
}

func (f *soakFaults) counts() soakCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.c
}

func (f *soakFaults) ReadFrom(b []byte) (int, net.Addr, error) { return f.pc.ReadFrom(b) }
func (f *soakFaults) Close() error                             { return f.pc.Close() }
func (f *soakFaults) LocalAddr() net.Addr                      { return f.pc.LocalAddr() }
func (f *soakFaults) SetDeadline(t time.Time) error            { return f.pc.SetDeadline(t) }
func (f *soakFaults) SetReadDeadline(t time.Time) error        { return f.pc.SetReadDeadline(t) }
func (f *soakFaults) SetWriteDeadline(t time.Time) error       { return f.pc.SetWriteDeadline(t) }
