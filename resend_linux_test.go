//go:build linux

package vaultudp

import (
	"crypto/ed25519"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// The attacks on sending again after a reset (resend.go): a reset that
// does not authenticate for the session sends nothing again, and a valid
// reset followed by a session with another key sends that key nothing of
// the old one's. Forged sources go out through a raw socket (root only).

// TestResendNotForForgedReset: resets for the client's live session that
// do not authenticate for it: the right index from the server's address
// with no token, and the right token (the server computes it) from
// another address. Neither drops the session nor sends anything again.
func TestResendNotForForgedReset(t *testing.T) {
	sp := newSpoofer(t)
	c, s := resendPair(t, GenerateIdentity(), nil)
	if _, err := c.WriteToUDPAddrPort([]byte("once"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "once", addrOf(c))
	p := c.peers.lookup(addrOf(s))
	idx := p.kp.current().remoteIndex
	before := c.Stats()
	noToken := make([]byte, resetLen)
	noToken[0], noToken[1] = ProtocolVersion, typeReset
	binary.BigEndian.PutUint32(noToken[4:], idx)
	sp.send(t, addrOf(s), addrOf(c), noToken)
	withToken := append([]byte(nil), noToken...)
	tok := s.resets.token(idx, addrOf(c), addrOf(s).Port())
	copy(withToken[8:], tok[:])
	other := netip.AddrPortFrom(addrOf(s).Addr(), addrOf(s).Port()+1)
	if other.Port() == 0 {
		other = netip.AddrPortFrom(other.Addr(), 1)
	}
	sp.send(t, other, addrOf(c), withToken)
	strangerBarrier(t, rawUDP(t), addrOf(c))
	st := c.Stats()
	if st.ResetsReceived != 0 || st.Resent != 0 || st.Handshakes != 1 {
		t.Errorf("after two forged resets: ResetsReceived %d, Resent %d, Handshakes %d; want 0, 0, 1", st.ResetsReceived, st.Resent, st.Handshakes)
	}
	if st.Drops.Auth != before.Drops.Auth+1 || st.Drops.UnknownSession != before.Drops.UnknownSession+1 {
		t.Errorf("Drops.Auth %d -> %d, Drops.UnknownSession %d -> %d; want +1 (no token), +1 (another address)",
			before.Drops.Auth, st.Drops.Auth, before.Drops.UnknownSession, st.Drops.UnknownSession)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("marker"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, s, "marker", addrOf(c)); len(got) != 0 {
		t.Errorf("the server read %q before the marker, want nothing", got)
	}
}

// TestResendNotAcrossIdentityReset: the client reaches its server through
// a relay. The server restarts with its identity, so its reset for the
// client's next datagram is valid; the client's hello is held, and given
// instead to a server of another identity, which the client's trust rules
// accept (VerifyPeer). The new session's key is not the lost session's:
// the datagram the reset took does not go to it.
func TestResendNotAcrossIdentityReset(t *testing.T) {
	id := GenerateIdentity()
	s1, err := Listen("udp4", "127.0.0.1:0", &Config{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s1.Close() })
	sAddr := addrOf(s1)
	c := listenT(t, "udp4", "127.0.0.1:0", &Config{
		VerifyPeer: func(netip.AddrPort, ed25519.PublicKey) error { return nil },
	})
	r := newPathRelay(t, addrOf(c), sAddr)
	via := r.addr()
	handshakeT(t, c, via)
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), via); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s1, "hello", via)
	s1.Close()
	restartOn(t, sAddr, &Config{Identity: id}) // answers with a valid reset
	other := listenT(t, "udp4", "127.0.0.1:0", &Config{Identity: GenerateIdentity()})
	r.hold.Store(true)
	if _, err := c.WriteToUDPAddrPort([]byte("for the old key"), via); err != nil {
		t.Fatal(err)
	}
	var hello []byte
	select {
	case hello = <-r.held:
	case <-time.After(waitLong):
		t.Fatalf("no hello after the reset (client %+v)", c.Stats())
	}
	if st := c.Stats(); st.ResetsReceived != 1 {
		t.Fatalf("ResetsReceived %d, want 1 (the restarted server's valid reset)", st.ResetsReceived)
	}
	to := addrOf(other)
	r.backend.Store(&to)
	r.hold.Store(false)
	r.toBackend(t, hello)
	if _, err := c.WriteToUDPAddrPort([]byte("marker"), via); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, other, "marker", via); len(got) != 0 {
		t.Errorf("the other identity read %q before the marker, want nothing", got)
	}
	if st := c.Stats(); st.Resent != 0 || st.Handshakes != 2 {
		t.Errorf("Resent %d, Handshakes %d; want 0, 2", st.Resent, st.Handshakes)
	}
}
