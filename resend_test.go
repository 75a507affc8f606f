package vaultudp

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestResendDue: the rule, on the fake clock. A reset is handled at
// resetAt; the new session comes rtt later; a datagram goes again if it
// was sealed within the round trip (at least resendFloor, at most
// resendCeiling) before the reset, or after it; only to the same key; and
// not at all if the new session came later than resendCeiling.
func TestResendDue(t *testing.T) {
	k1 := GenerateIdentity().Public().(ed25519.PublicKey)
	k2 := GenerateIdentity().Public().(ed25519.PublicKey)
	ms := time.Millisecond
	cases := []struct {
		name   string
		sealed time.Duration // before the reset (negative: after it)
		rtt    time.Duration // from the reset to the new session
		newKey ed25519.PublicKey
		want   bool
	}{
		{"within the floor", resendFloor - ms, ms, k1, true},
		{"at the floor", resendFloor, ms, k1, true},
		{"past the floor", resendFloor + ms, ms, k1, false},
		{"within the round trip", 90 * ms, 100 * ms, k1, true},
		{"at the round trip", 100 * ms, 100 * ms, k1, true},
		{"past the round trip", 101 * ms, 100 * ms, k1, false},
		{"sealed after the reset", -ms, ms, k1, true},
		{"round trip at the ceiling", resendCeiling, resendCeiling, k1, true},
		{"past the ceiling", resendCeiling + ms, resendCeiling, k1, false},
		{"new session past the ceiling", 0, resendCeiling + ms, k1, false},
		{"another key", ms, ms, k2, false},
		{"no key", ms, ms, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			clk.advance(t, time.Hour, 0) // room for sealed before the reset
			resetAt := int64(clk.since())
			sealed := resetAt - int64(tc.sealed)
			clk.advance(t, tc.rtt, 0)
			now := int64(clk.since())
			if got := resendDue(sealed, resetAt, now, k1, tc.newKey); got != tc.want {
				t.Errorf("sealed %v before the reset, new session %v after it: due %v, want %v", tc.sealed, tc.rtt, got, tc.want)
			}
		})
	}
	if resendDue(0, 0, 0, nil, nil) {
		t.Error("no key on either side: due, want not (a session of no identity)")
	}
}

// TestResendStoreBounds: a peer keeps its last resendSlots datagrams of at
// most resendMaxDatagram bytes, in one store; a Conn lends at most
// resendConnStores stores, and takes one back only from a peer whose
// datagrams are all older than resendCeiling. It prints the bounds.
func TestResendStoreBounds(t *testing.T) {
	clk := newFakeClock()
	c := fakeListen(t, clk, nil)
	peers := make([]*peer, resendConnStores+1)
	for i := range peers {
		peers[i] = &peer{}
	}
	keep := func(p *peer, b []byte) {
		c.keepSent(&session{peer: p}, b)
	}
	// One peer: the last four, none larger than the bound.
	p0 := peers[0]
	for i := range 6 {
		keep(p0, []byte(fmt.Sprint("datagram ", i)))
	}
	keep(p0, make([]byte, resendMaxDatagram+1))
	var got []string
	for i := range p0.resend.store.Load().slots {
		sl := &p0.resend.store.Load().slots[i]
		got = append(got, string(sl.data[:sl.n]))
	}
	want := map[string]bool{"datagram 2": true, "datagram 3": true, "datagram 4": true, "datagram 5": true}
	for _, g := range got {
		if !want[g] {
			t.Fatalf("the store holds %q, want the last four written (2 to 5), none over %d bytes", got, resendMaxDatagram)
		}
		delete(want, g)
	}
	// Every other peer but the last gets a store; the last none.
	for _, p := range peers[1:] {
		keep(p, []byte("x"))
	}
	c.resets.pool.mu.Lock()
	lent := len(c.resets.pool.lent)
	c.resets.pool.mu.Unlock()
	last := peers[len(peers)-1]
	if lent != resendConnStores || last.resend.store.Load() != nil {
		t.Fatalf("%d stores lent, the %dth peer has one: %v; want %d, false", lent, len(peers), last.resend.store.Load() != nil, resendConnStores)
	}
	// The others stay busy; p0 goes idle past the ceiling. The last peer
	// asks again after resendRetry, and gets p0's store.
	clk.advance(t, resendRetry, housekeepingEvery)
	for _, p := range peers[1 : len(peers)-1] {
		keep(p, []byte("busy"))
	}
	keep(last, []byte("mine"))
	if last.resend.store.Load() == nil || p0.resend.store.Load() != nil {
		t.Fatalf("after p0 was idle for %v: the last peer has a store: %v, p0 still has one: %v; want true, false",
			resendRetry, last.resend.store.Load() != nil, p0.resend.store.Load() != nil)
	}
	for i := range last.resend.store.Load().slots {
		sl := &last.resend.store.Load().slots[i]
		if s := string(sl.data[:sl.n]); sl.s != nil && s != "mine" {
			t.Fatalf("the store taken back still holds p0's %q", s)
		}
	}
	t.Logf("per peer: %d datagrams of at most %d bytes, a store of %d bytes; per Conn: %d stores, %d KiB",
		resendSlots, resendMaxDatagram, resendStoreBytes, resendConnStores, resendConnStores*resendStoreBytes>>10)
}

// TestResendStoreConcurrent: writers of one peer keep datagrams while a
// peer that needs a store takes idle ones back and a reset takes what is
// due; for the race detector.
func TestResendStoreConcurrent(t *testing.T) {
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	var wg sync.WaitGroup
	p := &peer{}
	s := &session{peer: p}
	for w := range 4 {
		wg.Go(func() {
			b := make([]byte, 1200)
			for i := range 2000 {
				b[0] = byte(w + i)
				c.keepSent(s, b)
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			p.mu.Lock()
			c.takeForResendLocked(p, s, []*session{s})
			c.takeQueueLocked(p)
			p.mu.Unlock()
		}
	})
	wg.Go(func() {
		for range 200 {
			p.resend.giveBack(c.now() + int64(time.Hour))
			c.resets.pool.lend(&resendRing{}, 0, 0)
		}
	})
	wg.Wait()
}

// resendPair is a client and a server on loopback (the server's identity
// id, the client's trust rules cc), a session between them, and one
// datagram each way.
func resendPair(t *testing.T, id ed25519.PrivateKey, cc *Config) (client, server *Conn) {
	t.Helper()
	s, err := Listen("udp4", "127.0.0.1:0", &Config{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // the tests close it earlier, to restart it
	c := listenT(t, "udp4", "127.0.0.1:0", cc)
	writeUntilRead(t, c, s, "hello")
	if _, err := s.WriteToUDPAddrPort([]byte("hi"), addrOf(c)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "hi", addrOf(s))
	return c, s
}

// readUntil reads r until it reads marker from from, within waitLong, and
// returns what it read before it.
func readUntil(t *testing.T, r *Conn, marker string, from netip.AddrPort) []string {
	t.Helper()
	var got []string
	r.SetReadDeadline(time.Now().Add(waitLong))
	defer r.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for range 1000 {
		n, src, err := r.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v, after %q (reader %+v, writer %+v)", marker, err, got, r.Stats(), from)
		}
		if src == from && string(buf[:n]) == marker {
			return got
		}
		got = append(got, string(buf[:n]))
	}
	t.Fatalf("%q not among 1000 datagrams", marker)
	return nil
}

// TestResendAfterRestart: the server restarts on its address with its
// identity; the client writes one datagram, under the session the server
// lost. The new server answers with a reset, the client handshakes again,
// and the datagram arrives under the new session: as over plain UDP, the
// restart loses nothing the new server was there to receive. (Before,
// the datagram was gone: the client's writer had to write again.)
func TestResendAfterRestart(t *testing.T) {
	id := GenerateIdentity()
	c, s1 := resendPair(t, id, nil)
	sAddr := addrOf(s1)
	s1.Close()
	s2 := restartOn(t, sAddr, &Config{Identity: id})
	// A reader waits on the client, as quic-go's always does: the reset
	// is handled as it arrives.
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		c.SetReadDeadline(time.Now().Add(waitLong))
		c.ReadFromUDPAddrPort(make([]byte, 2048))
	}()
	defer func() { c.SetReadDeadline(time.Now()); <-readerDone }()
	waitBlockedIn(t, "ReadFromUDPAddrPort")
	start := time.Now()
	if _, err := c.WriteToUDPAddrPort([]byte("the one datagram"), sAddr); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, s2, "the one datagram", addrOf(c)); len(got) != 0 {
		t.Errorf("before the one datagram the new server read %q", got)
	}
	took := time.Since(start)
	st := c.Stats()
	t.Logf("the datagram written under the lost session arrived %v after its write: %d reset, %d sent again, %d handshakes",
		took.Round(time.Microsecond), st.ResetsReceived, st.Resent, st.Handshakes)
	if st.ResetsReceived != 1 || st.Resent != 1 {
		t.Errorf("ResetsReceived %d, Resent %d; want 1, 1", st.ResetsReceived, st.Resent)
	}
	// Once: it does not come again.
	if _, err := c.WriteToUDPAddrPort([]byte("next"), sAddr); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, s2, "next", addrOf(c)); len(got) != 0 {
		t.Errorf("before the next datagram the new server read %q, want nothing (the one datagram went again once)", got)
	}
}

// TestResendNotAcrossIdentity: the server restarts on its address with
// another identity, and the client's trust rules accept any key
// (VerifyPeer; plain trust on first use would refuse the new key). The
// new server's reset cannot carry the lost session's token, so the client
// finds the restart by silence; either way the new identity never gets
// what was sealed for the old one. (TestResendNotAcrossIdentityReset has
// a valid reset and then another key.)
func TestResendNotAcrossIdentity(t *testing.T) {
	anyKey := &Config{
		VerifyPeer:       func(netip.AddrPort, ed25519.PublicKey) error { return nil },
		SilenceTimeout:   200 * time.Millisecond,
		KeepaliveTimeout: 100 * time.Millisecond,
	}
	c, s1 := resendPair(t, GenerateIdentity(), anyKey)
	sAddr := addrOf(s1)
	s1.Close()
	s2 := restartOn(t, sAddr, &Config{Identity: GenerateIdentity()})
	if _, err := c.WriteToUDPAddrPort([]byte("for the old key"), sAddr); err != nil {
		t.Fatal(err)
	}
	took := writeUntilRead(t, c, s2, "for whoever is there")
	if _, err := c.WriteToUDPAddrPort([]byte("marker"), sAddr); err != nil {
		t.Fatal(err)
	}
	got := readUntil(t, s2, "marker", addrOf(c))
	st := c.Stats()
	t.Logf("the new identity reached after %v: %d resets (Drops.Auth %d), %d silences, %d sent again",
		took.Round(time.Millisecond), st.ResetsReceived, st.Drops.Auth, st.Silences, st.Resent)
	if st.Resent != 0 || st.ResetsReceived != 0 {
		t.Errorf("Resent %d, ResetsReceived %d; want 0, 0", st.Resent, st.ResetsReceived)
	}
	for _, g := range got {
		if g != "for whoever is there" {
			t.Errorf("the new identity read %q", g)
		}
	}
}

// TestResendWindow: on the client's fake clock, a datagram sealed longer
// than the round trip before the reset does not go again (it reached the
// server before it stopped); one sealed within it does. The handshake
// after the reset takes no time on the fake clock: the round trip is
// resendFloor.
func TestResendWindow(t *testing.T) {
	clk := newFakeClock()
	id := GenerateIdentity()
	c, s1 := resendPair(t, id, &Config{clock: clk})
	sAddr := addrOf(s1)
	if _, err := c.WriteToUDPAddrPort([]byte("too old"), sAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s1, "too old", addrOf(c))
	s1.Close()
	s2 := restartOn(t, sAddr, &Config{Identity: id})
	clk.advance(t, resendFloor+time.Millisecond, 0)
	if _, err := c.WriteToUDPAddrPort([]byte("within"), sAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s2, "within", addrOf(c))
	if _, err := c.WriteToUDPAddrPort([]byte("marker"), sAddr); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, s2, "marker", addrOf(c)); len(got) != 0 {
		t.Errorf("the new server read %q besides within and marker, want nothing (too old is older than the window)", got)
	}
	if st := c.Stats(); st.Resent != 1 || st.ResetsReceived != 1 {
		t.Errorf("Resent %d, ResetsReceived %d; want 1 (within), 1", st.Resent, st.ResetsReceived)
	}
}

// BenchmarkResendKeep: what keeping a sealed datagram for a resend costs
// the data path (keepSent), beside the copy alone, and with writers of
// one peer on every core at once. The sealing and the send it is added
// to cost 1 to 2 µs on loopback (BenchmarkSeal, BenchmarkStream).
func BenchmarkResendKeep(b *testing.B) {
	c := listenT(b, "udp4", "127.0.0.1:0", nil)
	for _, size := range []int{64, 1200} {
		msg := randomPayload(size)
		b.Run(fmt.Sprintf("copy/%dB", size), func(b *testing.B) {
			var dst [resendMaxDatagram]byte
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for range b.N {
				copy(dst[:], msg)
			}
		})
		b.Run(fmt.Sprintf("keep/%dB", size), func(b *testing.B) {
			s := &session{peer: &peer{}}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for range b.N {
				c.keepSent(s, msg)
			}
		})
		b.Run(fmt.Sprintf("keep-parallel/%dB", size), func(b *testing.B) {
			s := &session{peer: &peer{}}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c.keepSent(s, msg)
				}
			})
		})
	}
}
