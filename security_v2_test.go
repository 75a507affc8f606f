package vaultudp

import (
	"crypto/rand"
	"testing"
	"time"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
)

// TestSecurityV2ReaderBounded (item 7): protocol v2 peers are found by
// their source IP, which anyone can forge. The reader's work for what
// comes from such an IP is bounded:
//
//   - junk from an IP with 64 keyed v2 peers is tried with a key or two,
//     not with all 64 (a box open each);
//   - plaintext key exchanges (a signature check each, and VerifyPeer)
//     go through the Conn's bounded handshake queue, as native hellos do:
//     a flood of them is dropped there, past the queue, and a native
//     datagram that arrives behind it is not held up by the checks.
func TestSecurityV2ReaderBounded(t *testing.T) {
	parallel(t)
	const peers = 64
	refs := make([]*fakeRef, peers)
	pcs := make([]PeerConfig, peers)
	for i := range refs {
		refs[i] = newFakeRef(t)
		pcs[i] = PeerConfig{Addr: refs[i].addr()}
	}
	c := v2Conn(t, nil, pcs...)
	for _, r := range refs {
		keyed(t, c, r)
	}
	att := rawUDP(t) // on 127.0.0.1, the peers' IP
	native := listenT(t, "udp4", "127.0.0.1:0", nil)
	handshakeT(t, native, addrOf(c))

	// Junk that looks like a sealed v2 datagram (not native, not a frame).
	const junk = 2000
	trials := c.v2.Trials()
	start := time.Now()
	for range junk {
		d := make([]byte, 200)
		rand.Read(d)
		d[0] = 0x42 // neither native nor a msgpack map
		if _, err := att.WriteToUDPAddrPort(d, addrOf(c)); err != nil {
			t.Fatal(err)
		}
	}
	barrier(t, c)
	junkTook := time.Since(start)
	perJunk := float64(c.v2.Trials()-trials) / junk

	// Plaintext key exchanges signed by the attacker's key, naming a
	// peer's port; then a native datagram behind them.
	var ak [32]byte
	rand.Read(ak[:])
	attacker := v2.NewKeys(&ak, GenerateIdentity())
	kx := v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, attacker.KeyExchange(refs[0].port())), nil)
	const kxs = 2000
	before := c.Stats()
	start = time.Now()
	for range kxs {
		if _, err := att.WriteToUDPAddrPort(kx, addrOf(c)); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Now()
	if _, err := native.WriteToUDPAddrPort([]byte("behind the flood"), addrOf(c)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, "behind the flood", addrOf(native))
	delay := time.Since(sent)
	kxTook := time.Since(start)
	waitFor(waitLong, func() bool { return c.hsQueued.Load() == 0 }) // the queue worked off
	barrier(t, c)
	st := c.Stats()
	refused, queueFull := st.Drops.Rejected-before.Drops.Rejected, st.Drops.HandshakeQueueFull-before.Drops.HandshakeQueueFull
	t.Logf("%d junk datagrams from the IP of %d v2 peers: %.2f box opens each, %v in all (%.1f µs each)",
		junk, peers, perJunk, junkTook.Round(time.Millisecond), float64(junkTook.Microseconds())/junk)
	t.Logf("%d forged plaintext key exchanges: %d verified and refused, %d dropped at the full handshake queue; a native datagram sent behind them read %v later (flood and read %v)",
		kxs, refused, queueFull, delay.Round(time.Microsecond), kxTook.Round(time.Millisecond))
	if perJunk > 2 {
		t.Errorf("%.2f box opens per junk datagram", perJunk)
	}
	if queueFull == 0 {
		t.Errorf("no key exchange went through the bounded handshake queue (%d verified, none dropped)", refused)
	}
	for _, r := range refs[:4] { // the peers still talk
		r.send(r.snd, c, r.sealed(c, "still", nil))
		expectRead(t, c, "still", r.addr())
	}
}
