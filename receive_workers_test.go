package vaultudp

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// sealedRun returns n sealed datagrams from client to server on the
// client's current session, each carrying a payload of size bytes that
// starts with tag and its sequence number (from first on): what WriteTo
// would send, made ahead, so that tests and benchmarks can send them in
// bursts from the client's socket.
func sealedRun(tb testing.TB, client, server *Conn, tag byte, first, n, size int) [][]byte {
	tb.Helper()
	pr, _ := client.peerFor(addrOf(server), lookupOnly)
	if pr == nil || pr.kp.current() == nil {
		tb.Fatal("no session with the server")
	}
	s := pr.kp.current()
	out := make([][]byte, n)
	payload := make([]byte, size)
	for i := range n {
		payload[0] = tag
		binary.BigEndian.PutUint32(payload[1:], uint32(first+i))
		d, err := client.appendSealed(make([]byte, 0, client.bufSize+tagLen), s, payload, true)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = d
	}
	return out
}

// sendTrain sends ds, all of one size, from c's socket to to in one GSO
// train where the socket has GSO (one datagram per call otherwise).
func sendTrain(tb testing.TB, c *Conn, ds [][]byte, to netip.AddrPort) {
	tb.Helper()
	var b []byte
	for _, d := range ds {
		if len(d) != len(ds[0]) {
			tb.Fatal("a train's datagrams must be of one size")
		}
		b = append(b, d...)
	}
	if _, err := c.sock.Load().WriteSegments(b, len(ds[0]), to, netip.Addr{}); err != nil {
		tb.Fatal(err)
	}
}

// workersSetup returns a server Conn and n clients with sessions with it,
// with GOMAXPROCS at least 4 for the test, so that the server has open
// workers however many cores the machine has, and shares every read with
// them (no backoff).
func workersSetup(t *testing.T, n int) (*Conn, []*Conn) {
	t.Helper()
	if runtime.GOMAXPROCS(0) < 4 {
		prev := runtime.GOMAXPROCS(4)
		t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
	server, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	server.opens.persist.Store(true) // share every read, so that the workers are tested however busy the machine
	if !server.sock.Load().Caps().BatchRead {
		// The portable path (udp_portable.go) reads one datagram at a
		// time: no read is worth sharing, and every datagram is opened
		// by the goroutine that read it.
		t.Skip("no batch reads on this socket: the open workers are never used")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	clients := make([]*Conn, n)
	for i := range clients {
		c, err := Listen("udp4", "127.0.0.1:0", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Handshake(ctx, addrOf(server)); err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	// The server has the session once the client's first sealed datagram
	// confirmed it: one each, read here.
	for _, c := range clients {
		if _, err := c.WriteToUDPAddrPort([]byte{0xff}, addrOf(server)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range clients {
		if _, _, err := server.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}
	server.SetReadDeadline(time.Time{})
	return server, clients
}

// TestOpenWorkersOrder: four clients send numbered datagrams in GSO trains
// of 32, interleaved, so that the server's reads hold several peers'
// datagrams and are shared out to its open workers; each peer's
// datagrams must reach ReadFrom in the order sent (some may be lost in a
// full socket buffer, none reordered), none counted as a replay or a
// failed authentication, and reads must have been shared out.
func TestOpenWorkersOrder(t *testing.T) {
	const peers, perPeer, train, window = 4, 2048, 32, 512
	server, clients := workersSetup(t, peers)
	to := addrOf(server)
	var got atomic.Int64
	sendDone := make(chan error, 1)
	go func() {
		seals := make([][][]byte, peers)
		for i, c := range clients {
			seals[i] = sealedRun(t, c, server, byte(i), 0, perPeer, 200)
		}
		deadline := time.Now().Add(20 * time.Second)
		sent := int64(0)
		for off := 0; off < perPeer; off += train {
			for i, c := range clients {
				for sent-got.Load() > window { // stay within the window, as a stream would
					if time.Now().After(deadline) {
						sendDone <- errors.New("reader made no progress")
						return
					}
					time.Sleep(100 * time.Microsecond)
				}
				sendTrain(t, c, seals[i][off:off+train], to)
				sent += train
			}
		}
		sendDone <- nil
	}()
	last := make([]int64, peers)
	for i := range last {
		last[i] = -1
	}
	byAddr := map[netip.AddrPort]int{}
	for i, c := range clients {
		byAddr[addrOf(c)] = i
	}
	buf := make([]byte, 2048)
	reordered := 0
	for got.Load() < peers*perPeer {
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := server.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break // the rest was lost
		}
		if err != nil {
			t.Fatal(err)
		}
		i, ok := byAddr[from]
		if !ok || n != 200 || int(buf[0]) != i {
			t.Fatalf("datagram of %d bytes from %v, tag %d", n, from, buf[0])
		}
		seq := int64(binary.BigEndian.Uint32(buf[1:]))
		if seq <= last[i] {
			reordered++
			t.Errorf("peer %d: datagram %d after %d", i, seq, last[i])
		}
		last[i] = seq
		got.Add(1)
	}
	if err := <-sendDone; err != nil {
		t.Fatal(err)
	}
	st := server.Stats()
	shared, byWorkers := server.opens.shared.Load(), server.opens.byWorkers.Load()
	t.Logf("received %d of %d; reads shared with open workers: %d, datagrams they decrypted: %d; drops: replay %d, auth %d, queue full %d",
		got.Load(), peers*perPeer, shared, byWorkers, st.Drops.Replay, st.Drops.Auth, st.Drops.QueueFull)
	if shared == 0 {
		t.Error("no read was shared with the open workers")
	}
	if st.Drops.Replay != 0 || st.Drops.Auth != 0 {
		t.Errorf("fresh datagrams dropped: replay %d, auth %d", st.Drops.Replay, st.Drops.Auth)
	}
	if got.Load() < peers*perPeer/2 {
		t.Errorf("only %d of %d received", got.Load(), peers*perPeer)
	}
}

// TestOpenWorkersReplay: bursts that hold each sealed datagram twice, and
// forged ones (a bit of the tag flipped), read in reads the workers share:
// each datagram is delivered once, every second copy counts as a replay
// and every forgery as a failed authentication, whichever goroutine
// decrypted which copy.
func TestOpenWorkersReplay(t *testing.T) {
	const peers, distinct, rounds = 2, 32, 8
	server, clients := workersSetup(t, peers)
	to := addrOf(server)
	seen := map[[2]uint32]int{}
	buf := make([]byte, 2048)
	read := func() bool {
		server.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := server.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if n != 100 {
			t.Fatalf("a datagram of %d bytes", n)
		}
		k := [2]uint32{uint32(buf[0]), binary.BigEndian.Uint32(buf[1:])}
		if seen[k]++; seen[k] > 1 {
			t.Errorf("peer %d's datagram %d delivered %d times", k[0], k[1], seen[k])
		}
		return true
	}
	forged := 0
	for r := range rounds {
		// Round by round, so that the server's socket has UDP GRO on
		// (udpio turns it on once reads find a backlog) and the later
		// rounds arrive in reads of many datagrams.
		for i, c := range clients {
			ds := sealedRun(t, c, server, byte(i), r*distinct, distinct, 100)
			burst := append([][]byte(nil), ds...)
			// The copies, in another order: in the same read as their
			// originals or the next, by the reader or a worker.
			for k := range ds {
				burst = append(burst, ds[(k+distinct/2)%distinct])
			}
			bad := append([]byte(nil), ds[0]...)
			bad[len(bad)-1] ^= 1
			burst = append(burst, bad)
			forged++
			sendTrain(t, c, burst, to)
		}
		for len(seen) < (r+1)*peers*distinct && read() {
		}
		// The copies and forgeries are counted, not delivered: wait
		// for the counts (bounded), so that the next round is apart.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			st := server.Stats()
			if int(st.Drops.Replay) >= (r+1)*peers*distinct && int(st.Drops.Auth) >= forged {
				break
			}
		}
	}
	for read() { // nothing more may come
	}
	st := server.Stats()
	want := peers * distinct * rounds
	t.Logf("delivered %d of %d; replays %d, auth %d; reads shared: %d, datagrams the workers decrypted: %d",
		len(seen), want, st.Drops.Replay, st.Drops.Auth, server.opens.shared.Load(), server.opens.byWorkers.Load())
	if len(seen) != want {
		t.Errorf("delivered %d distinct datagrams, want %d", len(seen), want)
	}
	if int(st.Drops.Replay) != want {
		t.Errorf("replays counted %d, want %d", st.Drops.Replay, want)
	}
	if int(st.Drops.Auth) != forged {
		t.Errorf("failed authentications counted %d, want %d", st.Drops.Auth, forged)
	}
	if server.opens.shared.Load() == 0 {
		t.Error("no read was shared with the open workers")
	}
}

// TestOpenWorkersCloseRebind: Rebind and then Close while peers stream
// and reads are being shared with the open workers: neither waits for
// long, the reader gets net.ErrClosed, and (under -race) no worker touches
// a read after its reader is done with it.
func TestOpenWorkersCloseRebind(t *testing.T) {
	server, clients := workersSetup(t, 2)
	to := addrOf(server)
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		seals := make([][][]byte, len(clients))
		for i, c := range clients {
			seals[i] = sealedRun(t, c, server, byte(i), 0, 4096, 200)
		}
		for off := 0; off < 4096; off += 32 {
			for i, c := range clients {
				select {
				case <-stop:
					return
				default:
				}
				b := make([]byte, 0, 32*len(seals[i][0]))
				for _, d := range seals[i][off : off+32] {
					b = append(b, d...)
				}
				c.sock.Load().WriteSegments(b, len(seals[i][0]), to, netip.Addr{}) // errors once the port is gone: fine
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := server.ReadFromUDPAddrPort(buf); err != nil {
				readErr <- err
				return
			}
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); server.opens.byWorkers.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no datagram was decrypted by a worker")
		}
	}
	if err := server.Rebind("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- server.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not return")
	}
	close(stop)
	<-sent
	if n := server.opens.n.Load(); n > 0 {
		t.Logf("%d open workers ended with the Conn; they decrypted %d datagrams", n, server.opens.byWorkers.Load())
	}
}

// TestOpenWorkersAllocs: a read shared with the open workers allocates
// nothing once they have started (the first shared read starts them).
func TestOpenWorkersAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	if runtime.GOMAXPROCS(0) < 4 {
		prev := runtime.GOMAXPROCS(4)
		t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
	y, read := sharedReads(t, true)
	if !y.sock.Load().Caps().BatchRead {
		t.Skip("no batch reads on this socket: the open workers are never used")
	}
	read()
	if a := testing.AllocsPerRun(200, read); a != 0 {
		t.Errorf("%v allocations per shared read of %d datagrams, want 0", a, readBatchSize)
	}
	if y.opens.shared.Load() == 0 {
		t.Error("no read was shared")
	}
}

// TestOpenWorkersSharedOrder: reads of 32 datagrams of one session handed
// to the receive stage directly (no socket, so every read is shared),
// until the workers have decrypted a few hundred of them (bounded in count
// and time): each read is delivered whole and in order, whoever decrypted
// which datagram. The tests over sockets above cannot make sure a worker
// takes part (a fast reader may open a whole read alone); this one loops
// until one has.
func TestOpenWorkersSharedOrder(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 4 {
		prev := runtime.GOMAXPROCS(4)
		t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
	y, read := sharedReads(t, true)
	y.opens.persist.Store(true)
	reads := 0
	for deadline := time.Now().Add(20 * time.Second); y.opens.byWorkers.Load() < 300 && reads < 20000 && time.Now().Before(deadline); reads++ {
		read() // fails t on a datagram lost or out of order
	}
	t.Logf("%d reads of %d: the workers decrypted %d datagrams", reads, readBatchSize, y.opens.byWorkers.Load())
	if y.opens.byWorkers.Load() == 0 {
		t.Error("no datagram was decrypted by a worker")
	}
	if st := y.Stats(); st.Drops.Replay != 0 || st.Drops.Auth != 0 {
		t.Errorf("drops: %+v", st.Drops)
	}
}

// TestOpenWorkersBackoff: reads the workers keep missing (taking less than
// a quarter of each) stop being shared
// for 2, 4, ... up to 256 reads after the fourth miss in a row; a read they
// took their share of resets it.
func TestOpenWorkersBackoff(t *testing.T) {
	var b openBatch
	for i := range 3 {
		b.score(32, 7) // 7 of 32: a miss
		if b.skip != 0 {
			t.Fatalf("after %d misses: skip %d, want 0", i+1, b.skip)
		}
	}
	for _, want := range []int{2, 4, 8, 16, 32, 64, 128, 256, 256, 256} {
		b.score(32, 0)
		if b.skip != want {
			t.Fatalf("after %d misses: skip %d, want %d", b.misses, b.skip, want)
		}
	}
	for range 100 { // however long it went on
		b.score(32, 1)
	}
	if b.skip != openBackoffMax {
		t.Fatalf("skip %d after many misses, want %d", b.skip, openBackoffMax)
	}
	b.skip = 0
	b.score(32, 8) // 8 of 32: a share
	if b.misses != 0 {
		t.Fatalf("misses %d after a read the workers took part in, want 0", b.misses)
	}
	b.score(32, 0)
	if b.skip != 0 {
		t.Fatalf("skip %d after one miss, want 0", b.skip)
	}
}

// TestOpenAheadSessionGone: a datagram a worker decrypted ahead whose
// session went before the reader's turn (retired by a datagram of the
// same read, or past its receive limit) is dropped and counted as of an
// unknown session, and nothing of it is delivered; for a retired one the
// reader answers with a reset, as it would had it found the index
// unknown itself.
func TestOpenAheadSessionGone(t *testing.T) {
	parallel(t)
	clk := newFakeClock()
	srv := fakeListen(t, clk, nil) // its clock moves only when the test says
	cl := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, cl, addrOf(srv))
	writeUntilRead(t, cl, srv, "up")
	ds := sealedRun(t, cl, srv, 7, 1000, 2, 100)
	ahead := func(d []byte) *packet {
		p := srv.getPacket()
		p.data = p.buf[:copy(p.buf, d)]
		p.from = addrOf(cl)
		srv.openAhead(p)
		if p.pre.s == nil {
			t.Fatal("openAhead did not decrypt a datagram of a live session")
		}
		return p
	}
	cases := []struct {
		name  string
		gone  func(s *session)
		reset bool
	}{
		{"expired", func(s *session) { srv.clock.Store(s.created + int64(srv.receiveLimit())) }, false},
		{"retired", func(s *session) { srv.index.remove(s) }, true},
	}
	for i, tc := range cases {
		p := ahead(ds[i])
		before := srv.Stats()
		clock := srv.clock.Load()
		tc.gone(p.pre.s)
		kept := srv.receive(p)
		srv.clock.Store(clock) // the next case's session is live again
		if kept {
			t.Fatalf("%s: the datagram was kept for the application", tc.name)
		}
		st := srv.Stats()
		if got := st.Drops.UnknownSession - before.Drops.UnknownSession; got != 1 {
			t.Errorf("%s: %d counted as of an unknown session, want 1", tc.name, got)
		}
		if got := st.DatagramsIn - before.DatagramsIn; got != 0 {
			t.Errorf("%s: %d delivered", tc.name, got)
		}
		if sent := st.ResetsSent > before.ResetsSent; sent != tc.reset {
			t.Errorf("%s: reset sent %v, want %v", tc.name, sent, tc.reset)
		}
	}
}
