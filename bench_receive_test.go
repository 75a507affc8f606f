package vaultudp

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/udpio"
)

// BenchmarkManyPeersReplay measures the receive path alone: 64 peers'
// sealed datagrams (512-byte payloads, the default padding), made ahead
// on real sessions, are sent in GSO trains of replayTrain from the peers'
// own sockets by another process (this test binary again,
// TestReplaySenderHelper, given the sockets and the datagrams), one
// goroutine that does nothing else, round-robin over the peers, with at
// most replayInFlight in flight (the readers' count goes to it over a
// pipe; no progress for 10 ms counts what is in flight as lost). So the
// senders cost the server's process nothing, and what is measured is how
// fast the server side opens and delivers.
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
// the readers got per second, loss% what never arrived. On a machine of
// two cores the sender's process takes its share of them: its system
// calls also do the kernel's loopback receive work.
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
	replayEnv      = "VAULTUDP_REPLAY_SENDER" // TestReplaySenderHelper's orders
)

// replayPeer is one peer's part of the replay: where it sends, and its
// datagrams back to back, each seg bytes.
type replayPeer struct {
	to  netip.AddrPort
	run []byte
	seg int
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
	files := make([]*os.File, peers) // the peers' sockets, for the sender's process
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	payload := randomPayload(replaySize)
	for i := range ps {
		k := i * servers / peers // the server this peer sends to
		to := ends[k].LocalAddr().(*net.UDPAddr).AddrPort()
		uc, err := net.ListenUDP("udp4", lo)
		if err != nil {
			b.Fatal(err)
		}
		setSocketBuffers(uc)
		if files[i], err = uc.File(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { files[i].Close() })
		if raw {
			b.Cleanup(func() { uc.Close() })
			seg := 1400 // about what a sealed one is
			ps[i] = replayPeer{to: to, run: make([]byte, per*seg), seg: seg}
			continue
		}
		c, err := Wrap(uc, nil)
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
		ps[i] = replayPeer{to: to, run: run, seg: seg}
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

	sender := startReplaySender(b, ps, files)
	var got atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(replaySize)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var last atomic.Int64
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
					sender.progress(got.Load())
				}
			}
		}()
	}
	sender.start()
	sent := sender.wait()
	for _, e := range ends {
		e.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	wg.Wait()
	b.StopTimer()
	n := got.Load()
	if elapsed := time.Duration(last.Load()); elapsed > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "recv/s")
	}
	b.ReportMetric(100*float64(sent-n)/float64(max(sent, 1)), "loss%")
	byWorkers := uint64(0)
	for _, c := range conns {
		byWorkers += c.opens.byWorkers.Load()
	}
	if !raw {
		b.ReportMetric(100*float64(byWorkers)/float64(max(n, 1)), "byworkers%")
	}
}

// replaySender is the sender's process, seen from the benchmark: the
// readers' count goes to it (progress), and it says what it sent.
type replaySender struct {
	tb   testing.TB
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	mu   sync.Mutex // guards writes to in
	last int64      // the count last written; under mu
}

// startReplaySender starts the sender's process with the peers' sockets
// and datagrams, and waits until it is ready to send.
func startReplaySender(tb testing.TB, ps []replayPeer, files []*os.File) *replaySender {
	tb.Helper()
	// The datagrams go through a file: hundreds of MB at large counts.
	f, err := os.CreateTemp("", "vaultudp-replay-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.Remove(f.Name()) })
	spec := []string{f.Name()}
	w := bufio.NewWriterSize(f, 1<<20)
	for _, p := range ps {
		w.Write(p.run)
		spec = append(spec, fmt.Sprintf("%s/%d/%d", p.to, p.seg, len(p.run)))
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestReplaySenderHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), replayEnv+"="+strings.Join(spec, " "))
	cmd.ExtraFiles = files // fd 3 onwards, in the peers' order
	cmd.Stderr = os.Stderr
	rs := &replaySender{tb: tb, cmd: cmd}
	if rs.in, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	rs.out = bufio.NewScanner(out)
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rs.in.Close(); cmd.Wait() })
	rs.line("ready")
	return rs
}

// line waits for the sender's line starting with want, and returns it.
func (rs *replaySender) line(want string) string {
	for rs.out.Scan() {
		if strings.HasPrefix(rs.out.Text(), want) {
			return rs.out.Text()
		}
	}
	rs.tb.Fatalf("the sender's process ended before %q: %v", want, rs.out.Err())
	return ""
}

// start has the sender begin; progress tells it the readers' count.
func (rs *replaySender) start() { rs.progress(0) }

func (rs *replaySender) progress(got int64) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if got < rs.last {
		return
	}
	rs.last = got
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(got))
	rs.in.Write(b[:]) // an error: the sender has ended, and says why
}

// wait waits for the sender to finish and returns how many it sent.
func (rs *replaySender) wait() int64 {
	var sent int64
	if _, err := fmt.Sscanf(rs.line("done"), "done %d", &sent); err != nil {
		rs.tb.Fatal(err)
	}
	return sent
}

// TestReplaySenderHelper is BenchmarkManyPeersReplay's sender, in a
// process of its own; it does nothing unless that benchmark runs it. Its
// orders (replayEnv): the datagrams' file, then each peer's destination,
// datagram size and run length, in the order of its sockets (fd 3 on).
// Its standard input brings the readers' counts (8 bytes each, the first
// one the start); it prints "ready", then "done <sent>".
func TestReplaySenderHelper(t *testing.T) {
	spec := strings.Fields(os.Getenv(replayEnv))
	if len(spec) == 0 {
		t.Skip("run by BenchmarkManyPeersReplay")
	}
	data, err := os.ReadFile(spec[0])
	if err != nil {
		t.Fatal(err)
	}
	type peer struct {
		sock udpio.Socket
		to   netip.AddrPort
		run  []byte
		seg  int
	}
	var ps []peer
	off := 0
	for i, p := range spec[1:] {
		var to string
		var seg, n int
		f := strings.Split(p, "/")
		to, seg, n = f[0], atoi(t, f[1]), atoi(t, f[2])
		pc, err := net.FilePacketConn(os.NewFile(uintptr(3+i), "peer"))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, peer{sock: udpio.New(pc), to: netip.MustParseAddrPort(to), run: data[off : off+n], seg: seg})
		off += n
	}
	var got atomic.Int64
	progress := make(chan struct{}, 1)
	started := make(chan struct{})
	go func() {
		var b [8]byte
		first := true
		for {
			if _, err := io.ReadFull(os.Stdin, b[:]); err != nil {
				return
			}
			got.Store(int64(binary.LittleEndian.Uint64(b[:])))
			if first {
				close(started)
				first = false
			}
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	fmt.Println("ready")
	<-started
	idle := time.NewTimer(time.Hour)
	sent, lost := int64(0), int64(0)
	per := len(ps[0].run) / ps[0].seg
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
				t.Fatal(err)
			}
			sent += int64(n)
		}
	}
	fmt.Printf("done %d\n", sent)
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
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
