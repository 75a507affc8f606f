package vaultudp

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/udpio"
)

// BenchmarkManyPeersReplay measures the receive path alone: 64 peers'
// sealed datagrams (512-byte payloads, the default padding), made ahead
// on real sessions, are sent in GSO trains of replayTrain from the peers'
// own sockets by one goroutine that does nothing else, round-robin over
// the peers, with at most replayInFlight in flight (no progress for 10 ms
// counts what is in flight as lost). So the senders cost next to nothing
// but their system calls, and what is measured is how fast the server
// side opens and delivers.
//
//   - one-conn: one server Conn, all 64 peers, one reading goroutine;
//   - two-conns: two independent server Conns with 32 peers each, a
//     reading goroutine each: the machine's parallel ceiling for the same
//     work, which one Conn should come close to (issue 26);
//   - raw-one, raw-two: the same trains of the same size to one or two
//     *net.UDPConns, read and not opened.
//
// Run with -cpu 1,2 and a fixed count (-benchtime 100000x: the datagrams
// are made before the timer starts, about 1.4 KB each). recv/s is what
// the readers got per second, loss% what never arrived. The sender runs
// in the same process; its system calls (which on loopback also do the
// kernel's receive work) hold a P until the runtime hands it off.
func BenchmarkManyPeersReplay(b *testing.B) {
	const peers = 64
	for _, servers := range []int{1, 2} {
		name := map[int]string{1: "one", 2: "two"}[servers]
		b.Run("raw-"+name, func(b *testing.B) { replayBench(b, servers, peers, true, false) })
		b.Run(name+"-conn"+map[int]string{1: "", 2: "s"}[servers], func(b *testing.B) { replayBench(b, servers, peers, false, true) })
	}
	// One Conn whose reader opens every datagram itself (no open
	// workers), as before they were built.
	b.Run("one-conn-alone", func(b *testing.B) { replayBench(b, 1, peers, false, false) })
}

const (
	replayTrain    = 16
	replayInFlight = 1024
	replaySize     = 512
)

type replayPeer struct {
	sock udpio.Socket
	to   netip.AddrPort
	run  []byte // the datagrams back to back
	seg  int    // the size of each
}

func replayBench(b *testing.B, servers, peers int, raw, workers bool) {
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	var ends []benchEndpoint
	var conns []*Conn
	for range servers {
		if raw {
			uc, err := net.ListenUDP("udp4", lo)
			if err != nil {
				b.Fatal(err)
			}
			setSocketBuffers(uc)
			b.Cleanup(func() { uc.Close() })
			ends = append(ends, uc)
			continue
		}
		c, err := Listen("udp4", "127.0.0.1:0", nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		if !workers {
			c.stopOpeners() // none start
		}
		ends = append(ends, c)
		conns = append(conns, c)
	}
	per := (b.N + peers - 1) / peers
	ps := make([]replayPeer, peers)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	payload := randomPayload(replaySize)
	for i := range ps {
		k := i * servers / peers // the server this peer sends to
		to := ends[k].LocalAddr().(*net.UDPAddr).AddrPort()
		if raw {
			uc, err := net.ListenUDP("udp4", lo)
			if err != nil {
				b.Fatal(err)
			}
			setSocketBuffers(uc)
			b.Cleanup(func() { uc.Close() })
			seg := 1400 // about what a sealed one is
			ps[i] = replayPeer{sock: udpio.New(uc), to: to, run: make([]byte, per*seg), seg: seg}
			continue
		}
		c, err := Listen("udp4", "127.0.0.1:0", nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		if err := c.Handshake(ctx, to); err != nil {
			b.Fatal(err)
		}
		// One datagram the usual way, read below: the server has the
		// session confirmed before the sealed ones come.
		if _, err := c.WriteToUDPAddrPort(payload[:1], to); err != nil {
			b.Fatal(err)
		}
		pr, _ := c.peerFor(to, lookupOnly)
		s := pr.kp.current()
		var run []byte
		seg := 0
		for range per {
			d, err := c.appendSealed(make([]byte, 0, c.bufSize+tagLen), s, payload, true)
			if err != nil {
				b.Fatal(err)
			}
			if seg != 0 && len(d) != seg {
				b.Fatalf("sealed datagrams of %d and %d bytes", seg, len(d))
			}
			if seg == 0 {
				run = make([]byte, 0, per*len(d))
			}
			seg = len(d)
			run = append(run, d...)
		}
		ps[i] = replayPeer{sock: c.sock.Load().Socket, to: to, run: run, seg: seg}
	}
	buf := make([]byte, 2048)
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for range peers / servers {
			if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
				b.Fatalf("server %d: %v", i, err)
			}
		}
		c.SetReadDeadline(time.Time{})
	}

	var got, last atomic.Int64
	progress := make(chan struct{}, 1)
	var wg sync.WaitGroup
	b.SetBytes(replaySize)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for _, e := range ends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for k := 1; ; k++ {
				if _, _, err := e.ReadFromUDPAddrPort(buf); err != nil {
					return
				}
				got.Add(1)
				if k%replayTrain == 0 {
					last.Store(int64(time.Since(start)))
					select {
					case progress <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	// The sender: trains round-robin over the peers, within the window.
	idle := time.NewTimer(time.Hour)
	sent, lost := int64(0), int64(0)
	for off := 0; off < per; off += replayTrain {
		for i := range ps {
			p := &ps[i]
			n := min(replayTrain, per-off)
			for sent-lost-got.Load() > replayInFlight-int64(n) {
				idle.Reset(10 * time.Millisecond)
				select {
				case <-progress:
				case <-idle.C:
					lost = sent - got.Load() // no progress: what is in flight is lost
				}
				idle.Stop()
			}
			if _, err := p.sock.WriteSegments(p.run[off*p.seg:(off+n)*p.seg], p.seg, p.to, netip.Addr{}); err != nil {
				b.Fatal(err)
			}
			sent += int64(n)
		}
	}
	for _, e := range ends {
		e.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	wg.Wait()
	b.StopTimer()
	n := got.Load()
	if elapsed := time.Duration(last.Load()); elapsed > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "recv/s")
	}
	b.ReportMetric(100*float64(sent-n)/float64(sent), "loss%")
	byWorkers := uint64(0)
	for _, c := range conns {
		byWorkers += c.opens.byWorkers.Load()
	}
	if !raw {
		b.ReportMetric(100*float64(byWorkers)/float64(max(n, 1)), "byworkers%")
	}
}

// BenchmarkOpenShared measures the receive stage alone, without sockets:
// reads of 32 sealed datagrams (a 512-byte payload, default padding) of one
// session handed to receiveSet, as a reader hands what recvmmsg returned,
// and taken from the read queue as ReadFrom does; ns/op is per datagram.
// "workers" shares each read with the open workers (GOMAXPROCS-1 of them),
// "alone" opens every datagram on the reading goroutine, as before. The
// replay window is cleared before each read (the same 32 datagrams go
// round). Run with -cpu 1,2: the ratio of the two at -cpu 2 is what the
// open workers give the receive path where a core is free.
func BenchmarkOpenShared(b *testing.B) {
	for _, workers := range []bool{false, true} {
		name := map[bool]string{false: "alone", true: "workers"}[workers]
		b.Run(name, func(b *testing.B) {
			y, read := sharedReads(b, workers)
			b.SetBytes(replaySize)
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; done += readBatchSize {
				read()
			}
			b.StopTimer()
			b.ReportMetric(100*float64(y.opens.byWorkers.Load())/float64(b.N), "byworkers%")
		})
	}
}

// sharedReads returns a receiving Conn and a function that hands it one
// read of readBatchSize sealed datagrams of one session (receiveSet) and
// takes them from its read queue, failing tb if one is not delivered, or
// not in the order of the read. The
// same datagrams go round: the session's replay window is cleared first.
// Without workers, the Conn has none.
func sharedReads(tb testing.TB, workers bool) (*Conn, func()) {
	tb.Helper()
	x, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { x.Close() })
	y, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { y.Close() })
	if !workers {
		y.stopOpeners()
	}
	to := addrOf(y)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Handshake(ctx, to); err != nil {
		tb.Fatal(err)
	}
	pr, _ := x.peerFor(to, lookupOnly)
	s := pr.kp.current()
	payload := randomPayload(replaySize)
	sealed := make([][]byte, readBatchSize)
	for i := range sealed {
		payload[0] = byte(i) // read checks the order by it
		d, err := x.appendSealed(make([]byte, 0, x.bufSize+tagLen), s, payload, true)
		if err != nil {
			tb.Fatal(err)
		}
		sealed[i] = d
	}
	idx, _ := sealedIndex(sealed[0])
	// The receiving session is made when a first sealed datagram confirms
	// it: one sent the usual way.
	if _, err := x.WriteToUDPAddrPort(payload[:1], to); err != nil {
		tb.Fatal(err)
	}
	y.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := y.ReadFromUDPAddrPort(make([]byte, 64)); err != nil {
		tb.Fatal(err)
	}
	y.SetReadDeadline(time.Time{})
	ys := y.index.lookup(idx)
	if ys == nil {
		tb.Fatal("no session on the receiving side")
	}
	rs := y.newReadSet(y.sock.Load()) // a set of its own: y's reader keeps its socket's
	for len(rs.pkts) < readBatchSize {
		rs.pkts = append(rs.pkts, y.getPacket())
	}
	from := addrOf(x)
	return y, func() {
		for i, p := range rs.pkts {
			p.data = p.buf[:copy(p.buf, sealed[i])]
			p.from, p.local, p.truncated, p.pre = from, netip.Addr{}, false, preOpened{}
		}
		ys.mu.Lock()
		ys.replay.reset()
		ys.mu.Unlock()
		rs.mu.Lock()
		y.receiveSet(rs, readBatchSize)
		rs.mu.Unlock()
		for i := range readBatchSize {
			select {
			case p := <-y.recvQ:
				if len(p.data) != replaySize || p.data[0] != byte(i) {
					tb.Fatalf("datagram %d of a read delivered as datagram %d", p.data[0], i)
				}
				y.putPacket(p)
			default:
				tb.Fatalf("a datagram was not delivered; drops %+v", y.Stats().Drops)
			}
		}
	}
}
