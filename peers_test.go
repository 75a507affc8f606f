package vaultudp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestManyPeersOneIP: three Conns on 127.0.0.1, different ports, are
// peers of a fourth; each is a separate peer with its own session and its
// own datagrams.
func TestManyPeersOneIP(t *testing.T) {
	d := listenT(t, "udp4", "127.0.0.1:0", nil)
	var cs []*Conn
	for range 3 {
		c := listenT(t, "udp4", "127.0.0.1:0", nil)
		cs = append(cs, c)
		if err := d.AddPeer(PeerConfig{Addr: addrOf(c), PublicKey: c.PublicKey()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.AddPeer(PeerConfig{Addr: addrOf(cs[0])}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("AddPeer of a configured address: %v, want ErrInvalidConfig", err)
	}
	for _, c := range cs {
		handshakeT(t, d, addrOf(c))
	}
	ip := netip.MustParseAddr("127.0.0.1")
	ps := d.PeersByIP(ip)
	if len(ps) != 3 {
		t.Fatalf("PeersByIP(%v): %d peers, want 3: %+v", ip, len(ps), ps)
	}
	for i, p := range ps {
		c := cs[i] // both sorted by port: Listen assigns in any order, so look up
		for _, cc := range cs {
			if addrOf(cc) == p.Addr {
				c = cc
			}
		}
		if p.Addr != addrOf(c) || !bytes.Equal(p.PublicKey, c.PublicKey()) || !p.Established || !p.Configured || p.Policy != RequireEncryption || p.LastHandshake.IsZero() {
			t.Errorf("peer %d: %+v", i, p)
		}
	}
	if len(d.PeersByIP(netip.MustParseAddr("127.0.0.2"))) != 0 {
		t.Error("PeersByIP(127.0.0.2) is not empty")
	}
	// An IPv4-mapped IPv6 address is the same peer.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(ip.As16()), addrOf(cs[0]).Port())
	if !d.HasPeer(mapped) || len(d.PeersByIP(mapped.Addr())) != 3 {
		t.Errorf("the IPv4-mapped form %v is not the same peer", mapped)
	}
	if got := d.Stats().Peers; got != 3 {
		t.Errorf("Stats().Peers = %d, want 3", got)
	}

	// Each gets its own datagrams, and d tells them apart by port.
	for i, c := range cs {
		if _, err := d.WriteToUDPAddrPort([]byte(fmt.Sprintf("to %d", i)), addrOf(c)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cs {
		expectRead(t, c, fmt.Sprintf("to %d", i), addrOf(d))
		if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("from %d", i)), addrOf(d)); err != nil {
			t.Fatal(err)
		}
	}
	got := map[netip.AddrPort]string{}
	for range cs {
		b, from := readWithin(t, d, waitLong)
		got[from] = string(b)
	}
	for i, c := range cs {
		if got[addrOf(c)] != fmt.Sprintf("from %d", i) {
			t.Errorf("from %v: %q, want %q", addrOf(c), got[addrOf(c)], fmt.Sprintf("from %d", i))
		}
		expectNothing(t, c, 20*time.Millisecond)
	}

	// RemovePeer drops one; the others go on.
	gone := addrOf(cs[1])
	if err := d.RemovePeer(gone); err != nil {
		t.Fatal(err)
	}
	if d.HasPeer(gone) {
		t.Error("HasPeer after RemovePeer")
	}
	if err := d.RemovePeer(gone); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("second RemovePeer: %v, want ErrUnknownPeer", err)
	}
	ps = d.Peers()
	if len(ps) != 2 || ps[0].Addr == gone || ps[1].Addr == gone {
		t.Errorf("Peers after RemovePeer: %+v", ps)
	}
	if len(d.PeersByIP(ip)) != 2 {
		t.Errorf("PeersByIP after RemovePeer: %+v", d.PeersByIP(ip))
	}
	// The removed peer's session is gone: what it sends under it is
	// dropped as an unknown session, not delivered under it; the reset
	// that answers it has the sender handshake again and send it again
	// under the new session (resend.go), as a new peer's.
	before := d.Stats()
	if _, err := cs[1].WriteToUDPAddrPort([]byte("after removal"), addrOf(d)); err != nil {
		t.Fatal(err)
	}
	if _, err := cs[0].WriteToUDPAddrPort([]byte("still here"), addrOf(d)); err != nil {
		t.Fatal(err)
	}
	// The two come from different sockets, so their order at d is not
	// certain.
	got = map[netip.AddrPort]string{}
	for range 2 {
		b, from := readWithin(t, d, waitLong)
		got[from] = string(b)
	}
	if got[addrOf(cs[0])] != "still here" || got[addrOf(cs[1])] != "after removal" {
		t.Errorf("after the removal d read %q, want still here from %v and after removal from %v", got, addrOf(cs[0]), gone)
	}
	expectNothing(t, d, 100*time.Millisecond)
	after := d.Stats()
	if after.Drops.UnknownSession == before.Drops.UnknownSession || after.Handshakes != before.Handshakes+1 {
		t.Errorf("unknown-session drops %d -> %d, handshakes %d -> %d; want more, +1 (the removed peer's datagram opened only under a new session)",
			before.Drops.UnknownSession, after.Drops.UnknownSession, before.Handshakes, after.Handshakes)
	}
}

// TestBroadcast: to three live peers and one whose handshake timed out.
func TestBroadcast(t *testing.T) {
	parallel(t)
	d := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: time.Second})
	var cs []*Conn
	for range 3 {
		c := listenT(t, "udp4", "127.0.0.1:0", nil)
		cs = append(cs, c)
		if err := d.AddPeer(PeerConfig{Addr: addrOf(c)}); err != nil {
			t.Fatal(err)
		}
	}
	dead := deadPort(t, "udp4", "127.0.0.1")
	if err := d.AddPeer(PeerConfig{Addr: dead, Policy: RequireEncryption}); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		handshakeT(t, d, addrOf(c))
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := d.Handshake(ctx, dead); !errors.Is(err, ErrHandshakeTimeout) {
		t.Fatalf("Handshake with a dead port: %v", err)
	}

	// The dead peer's write is dropped and counted as any write in the
	// back-off after a failed handshake is (UDP's write contract).
	n, err := d.Broadcast([]byte("to all"))
	if n != 4 || err != nil {
		t.Errorf("Broadcast: %d, %v; want 4, nil", n, err)
	}
	if got := d.Stats().Drops.WriteBackoff; got != 1 {
		t.Errorf("Drops.WriteBackoff %d, want 1 (the dead peer)", got)
	}
	for _, c := range cs {
		expectRead(t, c, "to all", addrOf(d))
		expectNothing(t, c, 100*time.Millisecond)
	}
	if s := d.Stats(); s.DatagramsOut != 3 {
		t.Errorf("DatagramsOut %d, want 3", s.DatagramsOut)
	}
}

// TestRoamingAndRebind: b moves to a new port with Rebind; a follows it on
// b's first authenticated datagram from there. Datagrams from a third
// address that do not authenticate never move the peer.
func TestRoamingAndRebind(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	aAddr, b0 := addrOf(a), addrOf(b)
	if _, err := b.WriteToUDPAddrPort([]byte("one"), aAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "one", b0)
	if _, err := a.WriteToUDPAddrPort([]byte("reply one"), b0); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "reply one", aAddr)

	if err := b.Rebind("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	b1 := addrOf(b)
	if b1 == b0 {
		t.Fatalf("Rebind kept the address %v", b0)
	}
	hs := b.Stats().Handshakes
	if _, err := b.WriteToUDPAddrPort([]byte("two"), aAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "two", b1)
	if a.HasPeer(b0) || !a.HasPeer(b1) {
		t.Errorf("after roaming: HasPeer(old) %v, HasPeer(new) %v", a.HasPeer(b0), a.HasPeer(b1))
	}
	if _, err := a.WriteToUDPAddrPort([]byte("reply two"), b1); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "reply two", aAddr)
	if b.Stats().Handshakes != hs || a.Stats().Handshakes != 1 {
		t.Errorf("Rebind cost a handshake: b %d -> %d, a %d", hs, b.Stats().Handshakes, a.Stats().Handshakes)
	}

	// A stranger sends, from its own address: a sealed datagram that b
	// really sent (captured and replayed), the same with a bit flipped,
	// a forgery under b's session index, and garbage.
	captured := sealedFrom(t, b, aAddr, "captured")
	if err := b.sock.Load().writeTo(captured, aAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "captured", b1)
	flipped := bytes.Clone(captured)
	flipped[len(flipped)-1] ^= 1
	forged := bytes.Clone(captured)
	for i := sealedHeaderLen; i < len(forged); i++ {
		forged[i] = byte(i)
	}
	raw := rawUDP(t)
	before := a.Stats().Drops
	for _, dg := range [][]byte{captured, flipped, forged, []byte("garbage")} {
		if _, err := raw.WriteToUDPAddrPort(dg, aAddr); err != nil {
			t.Fatal(err)
		}
	}
	strangerBarrier(t, raw, aAddr)
	after := a.Stats().Drops
	if after.Replay != before.Replay+1 || after.Auth != before.Auth+2 || after.Malformed != before.Malformed+1 {
		t.Errorf("stranger's datagrams: drops %+v -> %+v; want Replay +1, Auth +2, Malformed +1", before, after)
	}
	expectNothing(t, a, 20*time.Millisecond)
	stranger := normAddr(raw.LocalAddr().(*net.UDPAddr).AddrPort())
	for _, p := range a.Peers() {
		if bytes.Equal(p.PublicKey, b.PublicKey()) && p.Addr != b1 {
			t.Errorf("b's peer moved to %v", p.Addr)
		}
		if p.Addr == stranger && bytes.Equal(p.PublicKey, b.PublicKey()) {
			t.Errorf("the stranger's address holds b's key")
		}
	}
	if !a.HasPeer(b1) {
		t.Error("b's peer is gone")
	}
	// a still reaches b, b still reaches a.
	if _, err := a.WriteToUDPAddrPort([]byte("three"), b1); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "three", aAddr)
	if _, err := b.WriteToUDPAddrPort([]byte("reply three"), aAddr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "reply three", b1)
}

// sealedFrom seals p as c's next datagram to the peer at to, without
// sending it: what an eavesdropper captures on the wire.
func sealedFrom(t testing.TB, c *Conn, to netip.AddrPort, p string) []byte {
	t.Helper()
	s := sessionOf(t, c, to)
	rec := record{payload: []byte(p), hasPayload: true}
	buf := rec.appendTo(make([]byte, sealedHeaderLen, 4096), 0)
	out, err := s.seal(buf)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(out)
}
