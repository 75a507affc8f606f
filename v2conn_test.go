package vaultudp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
	"github.com/vaultudp/vaultudp/internal/zstd"
)

// Tests of ProtocolV2 peers on a Conn, against a reference peer played by
// raw UDP sockets on loopback with the v2wire codec: its listening socket
// (the configured address) and its sending socket (an ephemeral port, as
// the reference's, §1.2). The live test against the reference itself is
// in v2interop_test.go. No test sleeps to synchronise: they wait for
// datagrams, or for a native stranger's handshake reply (strangerBarrier:
// the Conn handles datagrams in the order they arrive, on one goroutine).

// fakeRef is a reference peer on 127.0.0.1.
type fakeRef struct {
	t    *testing.T
	lis  *net.UDPConn // its listening socket: the address Go is configured with
	snd  *net.UDPConn // its sending socket
	keys *v2.Keys
	z    *refZstd
}

func newFakeRef(t *testing.T) *fakeRef {
	t.Helper()
	var k [32]byte
	rand.Read(k[:])
	return &fakeRef{t: t, lis: rawUDP(t), snd: rawUDP(t), keys: v2.NewKeys(&k, GenerateIdentity()), z: mustRefZstd(t)}
}

func (r *fakeRef) addr() netip.AddrPort { return r.lis.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *fakeRef) port() int { return int(r.addr().Port()) }

func (r *fakeRef) signPub() ed25519.PublicKey { return r.keys.Sign.Public().(ed25519.PublicKey) }

// kx is its key exchange naming port, as a plaintext datagram.
func (r *fakeRef) kx(port int) []byte {
	return v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, r.keys.KeyExchange(port)), make([]byte, 100))
}

// shared is the box key it shares with c.
func (r *fakeRef) shared(c *Conn) *[32]byte {
	r.t.Helper()
	box, _ := c.V2PublicKeys()
	var k [32]byte
	copy(k[:], box)
	s, err := r.keys.SharedKey(&k)
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// sealed is a sealed datagram of payload (and control) to c.
func (r *fakeRef) sealed(c *Conn, payload string, control []byte) []byte {
	var p []byte
	if payload != "" {
		p = r.z.compress(nil, []byte(payload))
	}
	var bn [24]byte
	var in [16]byte
	rand.Read(bn[:])
	rand.Read(in[:])
	return v2.Seal(nil, r.shared(c), &bn, &in, v2.UnixSeconds(time.Now()), v2.AppendFrame(nil, p, control, nil))
}

// plain is a plaintext data datagram.
func (r *fakeRef) plain(payload string) []byte {
	return v2.AppendFrame(nil, r.z.compress(nil, []byte(payload)), nil, nil)
}

// send sends b from sock to c.
func (r *fakeRef) send(sock *net.UDPConn, c *Conn, b []byte) {
	r.t.Helper()
	if _, err := sock.WriteToUDPAddrPort(b, addrOf(c)); err != nil {
		r.t.Fatal(err)
	}
}

// read returns the next datagram c sent to the listening socket.
func (r *fakeRef) read() []byte {
	r.t.Helper()
	r.lis.SetReadDeadline(time.Now().Add(waitLong))
	defer r.lis.SetReadDeadline(time.Time{})
	buf := make([]byte, 65536)
	n, _, err := r.lis.ReadFromUDPAddrPort(buf)
	if err != nil {
		r.t.Fatalf("reference: nothing from the Conn: %v", err)
	}
	return buf[:n]
}

// readKx reads the next datagram and checks it is c's key exchange, in
// plaintext, byte for byte as the reference would write it for c's keys.
func (r *fakeRef) readKx(c *Conn) {
	r.t.Helper()
	b := r.read()
	want := v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, c.v2.Keys().KeyExchange(int(addrOf(c).Port()))), nil)
	if !bytes.Equal(b, want) {
		r.t.Fatalf("reference: got %d bytes %x..., want the Conn's plaintext key exchange", len(b), b[:min(len(b), 40)])
	}
	f, err := v2.DecodeFrame(b)
	if err != nil {
		r.t.Fatal(err)
	}
	kx, err := v2.DecodeKeyExchange(f.Control)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := v2.VerifyKeyExchange(&kx); err != nil || kx.Port != int(addrOf(c).Port()) {
		r.t.Fatalf("the Conn's key exchange: %v, port %d", err, kx.Port)
	}
}

// readSealed reads the next datagram, opens it and returns its payload.
func (r *fakeRef) readSealed(c *Conn) []byte {
	r.t.Helper()
	b := r.read()
	in, err := v2.Open(nil, r.shared(c), b)
	if err != nil {
		r.t.Fatalf("reference: cannot open a %d-byte datagram from the Conn: %v", len(b), err)
	}
	if !referenceAcceptsTimestamp(in.TS, time.Now()) {
		r.t.Fatalf("reference would refuse the timestamp %f (now %f)", in.TS, v2.UnixSeconds(time.Now()))
	}
	f, err := v2.DecodeFrame(in.Frame)
	if err != nil || f.Payload == nil {
		r.t.Fatalf("frame: %v", err)
	}
	p, err := r.z.decompress(nil, f.Payload)
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// v2Conn listens on 127.0.0.1 with pcs as ProtocolV2 peers.
func v2Conn(t *testing.T, cfg *Config, pcs ...PeerConfig) *Conn {
	t.Helper()
	if cfg == nil {
		cfg = &Config{}
	}
	for _, pc := range pcs {
		pc.Protocol = ProtocolV2
		cfg.Peers = append(cfg.Peers, pc)
	}
	return listenT(t, "udp4", "127.0.0.1:0", cfg)
}

// keyed makes c and r know each other's keys: r's plaintext key exchange
// from its sending socket, c's answer.
func keyed(t *testing.T, c *Conn, r *fakeRef) {
	t.Helper()
	r.send(r.snd, c, r.kx(r.port()))
	r.readKx(c)
}

// barrier returns once c has handled every datagram sent to it before.
func barrier(t *testing.T, c *Conn) {
	t.Helper()
	strangerBarrier(t, rawUDP(t), addrOf(c))
}

func peerInfo(t *testing.T, c *Conn, addr netip.AddrPort) PeerInfo {
	t.Helper()
	for _, pi := range c.Peers() {
		if pi.Addr == addr {
			return pi
		}
	}
	t.Fatalf("no peer %v", addr)
	return PeerInfo{}
}

func TestV2Exchange(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	// Written before the reference's key is known: it waits (RequireEncryption).
	if _, err := c.WriteToUDPAddrPort([]byte("queued"), r.addr()); err != nil {
		t.Fatal(err)
	}
	if pi := peerInfo(t, c, r.addr()); pi.Protocol != ProtocolV2 || pi.Established || pi.PublicKey != nil {
		t.Fatalf("before the key exchange: %+v", pi)
	}
	keyed(t, c, r)
	if got := r.readSealed(c); string(got) != "queued" {
		t.Fatalf("queued datagram: %q", got)
	}

	// Sealed from its ephemeral port: delivered with its configured address.
	r.send(r.snd, c, r.sealed(c, "hello", nil))
	expectRead(t, c, "hello", r.addr())
	pi := peerInfo(t, c, r.addr())
	if !pi.Established || !bytes.Equal(pi.PublicKey, r.signPub()) || pi.LastHandshake.IsZero() {
		t.Fatalf("after the key exchange: %+v", pi)
	}

	// Binary payloads go both ways (a reference application would drop
	// this one: not UTF-8).
	bin := []byte{0xff, 0xfe, 0x00, 0x01, 0x80}
	if _, err := c.WriteTo(bin, net.UDPAddrFromAddrPort(r.addr())); err != nil {
		t.Fatal(err)
	}
	b := r.read()
	if eff := v2.EffectiveMTU(c.mtu); len(b) != eff+v2.SealOverhead && len(b) != eff+1+v2.SealOverhead {
		t.Fatalf("sealed datagram of %d bytes, want the reference's padded size for MTU %d", len(b), c.mtu)
	}
	in, err := v2.Open(nil, r.shared(c), b)
	if err != nil {
		t.Fatal(err)
	}
	if age := v2.UnixSeconds(time.Now()) - in.TS; age < 25 || age > 35 {
		t.Fatalf("timestamp %f s old, want about %v (backdated)", age, v2.SendBackdate)
	}
	f, _ := v2.DecodeFrame(in.Frame)
	if p, _ := r.z.decompress(nil, f.Payload); !bytes.Equal(p, bin) || utf8.Valid(p) {
		t.Fatalf("payload %x", p)
	}
	r.send(r.snd, c, r.sealed(c, string(bin), nil))
	expectRead(t, c, string(bin), r.addr())

	// An empty datagram is a zstd frame of nothing, delivered as such.
	if _, err := c.WriteToUDPAddrPort(nil, r.addr()); err != nil {
		t.Fatal(err)
	}
	if p := r.readSealed(c); len(p) != 0 {
		t.Fatalf("empty payload: %q", p)
	}

	// Its sealed periodic key exchange refreshes, answers nothing.
	r.send(r.snd, c, r.sealed(c, "", v2.AppendKeyExchange(nil, r.keys.KeyExchange(r.port()))))
	r.send(r.snd, c, r.sealed(c, "after", nil))
	expectRead(t, c, "after", r.addr())
	st := c.Stats()
	if st.V2KeyExchanges != 2 || st.DatagramsIn != 3 || st.DatagramsOut != 3 {
		t.Fatalf("stats %+v", st)
	}
	checkClean(t, "v2", c)

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.Handshake(ctx, r.addr()); err != nil {
		t.Fatal(err)
	}
	if err := c.RemovePeer(r.addr()); err != nil {
		t.Fatal(err)
	}
	if len(c.Peers()) != 0 || c.v2.Active() {
		t.Fatalf("after RemovePeer: %+v", c.Peers())
	}
}

// TestV2PinnedBoxKey: with the reference's box key given, the Conn sends
// its key exchange at AddPeer and seals at once.
func TestV2PinnedBoxKey(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr(), BoxKey: r.keys.BoxPublic[:]})
	r.readKx(c)
	if _, err := c.WriteToUDPAddrPort([]byte("at once"), r.addr()); err != nil {
		t.Fatal(err)
	}
	if got := r.readSealed(c); string(got) != "at once" {
		t.Fatalf("got %q", got)
	}
	r.send(r.snd, c, r.sealed(c, "hi", nil))
	expectRead(t, c, "hi", r.addr())
}

// TestV2AttackLiftedSignature: a key exchange carrying the attacker's
// enc_key with a witness's sign_key and signature (§13a), one self-signed
// over other keys, and an unsigned one are all refused, answered with
// nothing, and install nothing.
func TestV2AttackLiftedSignature(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	var ak [32]byte
	rand.Read(ak[:])
	attacker := v2.NewKeys(&ak, GenerateIdentity())
	witness := r.keys.KeyExchange(r.port())

	lifted := *witness
	lifted.EncKey = attacker.EncKey // the witness's sign_key and signature stay
	other := *attacker.KeyExchange(r.port())
	other.Signature = r.keys.KeyExchange(r.port()).Signature // self-signed message over other keys
	selfOther := *attacker.KeyExchange(r.port())
	msg := []byte(r.keys.EncKey + attacker.SignKey)
	selfOther.Signature = v2.B64.EncodeToString(append(ed25519.Sign(attacker.Sign, msg), msg...))
	unsigned := *attacker.KeyExchange(r.port())
	unsigned.Signature = ""
	for _, kx := range []*v2.KeyExchange{&lifted, &other, &selfOther, &unsigned} {
		r.send(r.snd, c, v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, kx), nil))
	}
	barrier(t, c)
	if st := c.Stats(); st.Drops.Auth != 4 || st.V2KeyExchanges != 0 {
		t.Fatalf("stats %+v", st)
	}
	if pi := peerInfo(t, c, r.addr()); pi.PublicKey != nil {
		t.Fatalf("learned %x from forged key exchanges", pi.PublicKey)
	}
	// Nothing was answered: the first datagram to arrive is the answer to
	// the real key exchange.
	keyed(t, c, r)
	r.send(r.snd, c, r.sealed(c, "real", nil))
	expectRead(t, c, "real", r.addr())
}

// TestV2AttackSpoofedKeyExchange: for a peer with a pinned key, a
// correctly self-signed key exchange from its very address with other keys
// is refused, and the Conn keeps sealing to the pinned peer.
func TestV2AttackSpoofedKeyExchange(t *testing.T) {
	parallel(t)
	for _, pin := range []string{"PublicKey", "BoxKey"} {
		t.Run(pin, func(t *testing.T) {
			r := newFakeRef(t)
			pc := PeerConfig{Addr: r.addr()}
			if pin == "PublicKey" {
				pc.PublicKey = r.signPub()
			} else {
				pc.BoxKey = r.keys.BoxPublic[:]
			}
			c := v2Conn(t, nil, pc)
			if pin == "BoxKey" {
				r.readKx(c) // sent at AddPeer
			}
			keyed(t, c, r)
			var ak [32]byte
			rand.Read(ak[:])
			attacker := v2.NewKeys(&ak, GenerateIdentity())
			spoof := v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, attacker.KeyExchange(r.port())), nil)
			r.send(r.lis, c, spoof) // from the reference's own address
			r.send(r.snd, c, spoof) // and from its sending port
			barrier(t, c)
			if st := c.Stats(); st.Drops.Rejected != 2 {
				t.Fatalf("stats %+v", st)
			}
			if _, err := c.WriteToUDPAddrPort([]byte("secret for the reference"), r.addr()); err != nil {
				t.Fatal(err)
			}
			b := r.read()
			as, _ := attacker.SharedKey(&c.v2.Keys().BoxPublic)
			if _, err := v2.Open(nil, as, b); err == nil {
				t.Fatal("the attacker opened the Conn's datagram")
			}
			in, err := v2.Open(nil, r.shared(c), b)
			if err != nil {
				t.Fatalf("the pinned reference cannot open the Conn's datagram: %v", err)
			}
			if f, _ := v2.DecodeFrame(in.Frame); f.Payload == nil {
				t.Fatal("no payload")
			}
			r.send(r.snd, c, r.sealed(c, "still", nil))
			expectRead(t, c, "still", r.addr())
		})
	}
}

// TestV2AttackReplay: a sealed datagram is delivered once, whatever port
// it is replayed from.
func TestV2AttackReplay(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	keyed(t, c, r)
	d := r.sealed(c, "once", nil)
	r.send(r.snd, c, d)
	r.send(r.snd, c, d)
	r.send(rawUDP(t), c, d) // another port of the same IP
	r.send(r.lis, c, d)
	r.send(r.snd, c, r.sealed(c, "after", nil))
	expectRead(t, c, "once", r.addr())
	expectRead(t, c, "after", r.addr())
	if st := c.Stats(); st.Drops.Replay != 3 || st.DatagramsIn != 2 {
		t.Fatalf("stats %+v", st)
	}
	// A stale one (61 s old) is refused too.
	var bn [24]byte
	var in [16]byte
	rand.Read(bn[:])
	rand.Read(in[:])
	old := v2.Seal(nil, r.shared(c), &bn, &in, v2.UnixSeconds(time.Now().Add(-61*time.Second)), v2.AppendFrame(nil, r.z.compress(nil, []byte("old")), nil, nil))
	r.send(r.snd, c, old)
	r.send(r.snd, c, r.sealed(c, "fresh", nil))
	expectRead(t, c, "fresh", r.addr())
	if st := c.Stats(); st.Drops.Replay != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// TestV2AttackPlaintext: under RequireEncryption, plaintext data from a
// keyed v2 peer is dropped wherever it comes from, while its plaintext key
// exchanges are still read. Under Opportunistic, plaintext is delivered
// until the peer has been seen sealed.
func TestV2AttackPlaintext(t *testing.T) {
	parallel(t)
	t.Run("RequireEncryption", func(t *testing.T) {
		r := newFakeRef(t)
		c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
		r.send(r.snd, c, r.plain("before keys"))
		keyed(t, c, r) // a plaintext key exchange, read
		r.send(r.snd, c, r.plain("after keys"))
		r.send(r.lis, c, r.plain("from its address"))
		r.send(r.snd, c, r.sealed(c, "sealed", nil))
		expectRead(t, c, "sealed", r.addr())
		if st := c.Stats(); st.Drops.Policy != 3 || st.DatagramsIn != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("Opportunistic", func(t *testing.T) {
		r := newFakeRef(t)
		c := v2Conn(t, &Config{Policy: Opportunistic}, PeerConfig{Addr: r.addr()})
		if _, err := c.WriteToUDPAddrPort([]byte("clear"), r.addr()); err != nil {
			t.Fatal(err)
		}
		b := r.read() // in clear: no key yet
		f, err := v2.DecodeFrame(b)
		if err != nil || f.Payload == nil {
			t.Fatalf("plaintext datagram: %v", err)
		}
		r.send(r.snd, c, r.plain("plain"))
		expectRead(t, c, "plain", r.addr())
		keyed(t, c, r)
		r.send(r.snd, c, r.sealed(c, "sealed", nil))
		expectRead(t, c, "sealed", r.addr())
		r.send(r.snd, c, r.plain("downgrade"))
		r.send(r.snd, c, r.sealed(c, "sealed again", nil))
		expectRead(t, c, "sealed again", r.addr())
		if st := c.Stats(); st.Drops.Policy != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// TestV2AttackPortField: a key exchange naming a port that is not the
// peer's installs nothing and is not answered (the reference would store
// the keys under that port and answer there, §13e).
func TestV2AttackPortField(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	victim := rawUDP(t) // a port of the same IP that is not a peer
	vport := int(victim.LocalAddr().(*net.UDPAddr).Port)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	r.send(r.snd, c, r.kx(vport))
	r.send(r.lis, c, r.kx(vport))
	barrier(t, c)
	if st := c.Stats(); st.Drops.Rejected != 2 || st.V2KeyExchanges != 0 {
		t.Fatalf("stats %+v", st)
	}
	if pi := peerInfo(t, c, r.addr()); pi.PublicKey != nil {
		t.Fatalf("installed %x", pi.PublicKey)
	}
	victim.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _, err := victim.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Fatalf("the Conn sent %d bytes to the port named in the key exchange", n)
	}

	// Two v2 peers on one IP: a sealed key exchange of one naming the
	// other's port installs nothing for the other.
	r2 := newFakeRef(t)
	if err := c.AddPeer(PeerConfig{Addr: r2.addr(), Protocol: ProtocolV2}); err != nil {
		t.Fatal(err)
	}
	keyed(t, c, r)
	r.send(r.snd, c, r.sealed(c, "", v2.AppendKeyExchange(nil, r.keys.KeyExchange(r2.port()))))
	barrier(t, c)
	if pi := peerInfo(t, c, r2.addr()); pi.PublicKey != nil {
		t.Fatalf("the second peer got keys from the first's key exchange: %x", pi.PublicKey)
	}
	if st := c.Stats(); st.Drops.Rejected != 3 {
		t.Fatalf("stats %+v", st)
	}
	// Each is heard on its own key.
	keyed(t, c, r2)
	r2.send(r2.snd, c, r2.sealed(c, "two", nil))
	r.send(r.snd, c, r.sealed(c, "one", nil))
	expectRead(t, c, "two", r2.addr())
	expectRead(t, c, "one", r.addr())
}

// TestV2OwnKeysReflected: our own key exchange sent back to us installs
// nothing.
func TestV2OwnKeysReflected(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	own := v2.AppendFrame(nil, nil, v2.AppendKeyExchange(nil, c.v2.Keys().KeyExchange(r.port())), nil)
	r.send(r.snd, c, own)
	barrier(t, c)
	if st := c.Stats(); st.Drops.Auth != 1 || st.V2KeyExchanges != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestV2ReferenceRestart: a restarted reference comes with new keys (it
// draws them at random). Trust on first use refuses them; a VerifyPeer
// that accepts them lets the Conn follow.
func TestV2ReferenceRestart(t *testing.T) {
	parallel(t)
	for _, follow := range []bool{false, true} {
		t.Run(map[bool]string{false: "tofu", true: "VerifyPeer"}[follow], func(t *testing.T) {
			r := newFakeRef(t)
			cfg := &Config{}
			if follow {
				cfg.VerifyPeer = func(netip.AddrPort, ed25519.PublicKey) error { return nil }
			}
			c := v2Conn(t, cfg, PeerConfig{Addr: r.addr()})
			keyed(t, c, r)
			var k [32]byte
			rand.Read(k[:])
			r.keys = v2.NewKeys(&k, GenerateIdentity())
			r.send(r.snd, c, r.kx(r.port()))
			if !follow {
				barrier(t, c)
				if st := c.Stats(); st.Drops.Rejected != 1 {
					t.Fatalf("stats %+v", st)
				}
				return
			}
			r.readKx(c) // answered: it holds none of our keys now
			r.send(r.snd, c, r.sealed(c, "new keys", nil))
			expectRead(t, c, "new keys", r.addr())
		})
	}
}

// TestV2KeyProbe: with Config.V2KeyProbe the Conn asks for the reference's
// key exchange at AddPeer.
func TestV2KeyProbe(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, &Config{V2KeyProbe: true}, PeerConfig{Addr: r.addr()})
	b := r.read()
	want := v2.AppendFrame(nil, nil, v2.AppendKeyProbe(nil, c.v2.Keys().SignKey, int(addrOf(c).Port())), nil)
	if !bytes.Equal(b, want) {
		t.Fatalf("got %q, want the probe", b)
	}
	keyed(t, c, r)
}

func TestV2TooLarge(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr(), BoxKey: r.keys.BoxPublic[:]})
	r.readKx(c)
	eff := v2.EffectiveMTU(c.mtu)
	max := v2.MaxIncompressible(eff)
	rnd := make([]byte, max+1)
	rand.Read(rnd)
	_, err := c.WriteToUDPAddrPort(rnd, r.addr())
	if !errors.Is(err, ErrMessageTooLarge) || !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("write of %d random bytes: %v", len(rnd), err)
	}
	if _, err := c.WriteToUDPAddrPort(rnd[:max], r.addr()); err != nil {
		t.Fatalf("write of %d random bytes: %v", max, err)
	}
	if got := r.readSealed(c); !bytes.Equal(got, rnd[:max]) {
		t.Fatal("payload differs")
	}
	// Compressible payloads fit the reference's frame limit, but not
	// beyond MaxPayload: the size rules of native peers.
	fit := []byte(strings.Repeat("compressible ", c.MaxPayload()/13))
	if _, err := c.WriteToUDPAddrPort(fit, r.addr()); err != nil {
		t.Fatal(err)
	}
	if got := r.readSealed(c); !bytes.Equal(got, fit) {
		t.Fatal("payload differs")
	}
	big := []byte(strings.Repeat("compressible ", 3000))
	_, err = c.WriteToUDPAddrPort(big, r.addr())
	var tl *tooLargeError
	if !errors.Is(err, ErrMessageTooLarge) || !errors.As(err, &tl) || tl.max != c.MaxPayload() {
		t.Fatalf("write of %d compressible bytes: %v, want ErrMessageTooLarge with the limit MaxPayload (%d)", len(big), err, c.MaxPayload())
	}
	// What a v2 peer sends is read up to MaxPayload bytes, as from a
	// native peer: beyond, it is dropped and counted.
	before := c.Stats().Drops.TooLarge
	r.send(r.snd, c, r.sealed(c, string(big), nil))
	exact := strings.Repeat("x", c.MaxPayload())
	r.send(r.snd, c, r.sealed(c, exact, nil))
	expectRead(t, c, exact, r.addr())
	if st := c.Stats(); st.Drops.TooLarge != before+1 {
		t.Fatalf("TooLarge %d, want %d: a %d-byte payload from a v2 peer must be dropped (MaxPayload %d)", st.Drops.TooLarge, before+1, len(big), c.MaxPayload())
	}
}

// TestV2ConnPadding: Config.Padding applies to sealed v2 datagrams.
func TestV2ConnPadding(t *testing.T) {
	parallel(t)
	for _, pad := range []Padding{PadNone, PadBlock(64), PadBlock(500)} {
		t.Run(pad.String(), func(t *testing.T) {
			r := newFakeRef(t)
			c := v2Conn(t, &Config{Padding: pad}, PeerConfig{Addr: r.addr(), BoxKey: r.keys.BoxPublic[:]})
			r.readKx(c)
			for _, n := range []int{0, 5, 300, 900} {
				p := make([]byte, n)
				rand.Read(p)
				if _, err := c.WriteToUDPAddrPort(p, r.addr()); err != nil {
					t.Fatal(err)
				}
				b := r.read()
				natural := v2.SealOverhead + v2.FrameLen(len(r.z.compress(nil, p)), 0, 0)
				switch {
				case pad == PadNone && len(b) != natural:
					t.Fatalf("%d bytes: datagram of %d, want %d", n, len(b), natural)
				case pad > 0 && len(b)%int(pad) != 0 && len(b) != v2.EffectiveMTU(c.mtu)+v2.SealOverhead && len(b)%int(pad) != int(pad)-1:
					t.Fatalf("%d bytes: datagram of %d, not a multiple of %d", n, len(b), int(pad))
				}
				if _, err := v2.Open(nil, r.shared(c), b); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestV2SendRateLimit: no more than the reference accepts per second goes
// out; the rest is counted.
func TestV2SendRateLimit(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr(), BoxKey: r.keys.BoxPublic[:]})
	r.readKx(c)
	for range 150 {
		if _, err := c.WriteToUDPAddrPort([]byte("x"), r.addr()); err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stats()
	if st.DatagramsOut+st.Drops.V2SendLimit != 150 || st.DatagramsOut > v2.SendData || st.DatagramsOut < v2.SendData-1 {
		t.Fatalf("sent %d, held back %d", st.DatagramsOut, st.Drops.V2SendLimit)
	}
}

// TestV2GoToGo: two Conns speaking v2 to each other (one knows the
// other's box key) exchange binary and large payloads, beside a native
// peer on the same IP.
func TestV2GoToGo(t *testing.T) {
	parallel(t)
	b := listenT(t, "udp4", "127.0.0.1:0", nil)
	bBox, _ := b.V2PublicKeys()
	a := v2Conn(t, nil, PeerConfig{Addr: addrOf(b), BoxKey: bBox})
	if err := b.AddPeer(PeerConfig{Addr: addrOf(a), Protocol: ProtocolV2}); err != nil {
		t.Fatal(err)
	}
	native := listenT(t, "udp4", "127.0.0.1:0", nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for _, hs := range []struct {
		c  *Conn
		to netip.AddrPort
	}{{a, addrOf(b)}, {b, addrOf(a)}, {native, addrOf(a)}} {
		if err := hs.c.Handshake(ctx, hs.to); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte{0, 1, 2, 3, 0xff}, a.MaxPayload()/5) // compressible, as large as any datagram
	for _, p := range [][]byte{{0xff, 0xfe, 0}, []byte("text"), big} {
		if _, err := a.WriteToUDPAddrPort(p, addrOf(b)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, b, string(p), addrOf(a))
		if _, err := b.WriteToUDPAddrPort(p, addrOf(a)); err != nil {
			t.Fatal(err)
		}
		expectRead(t, a, string(p), addrOf(b))
	}
	if _, err := native.WriteToUDPAddrPort([]byte("native"), addrOf(a)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "native", addrOf(native))
	for _, pi := range a.Peers() {
		if want := map[bool]Protocol{true: ProtocolV2, false: ProtocolV3}[pi.Addr == addrOf(b)]; pi.Protocol != want || !pi.Established {
			t.Fatalf("peer %+v", pi)
		}
	}
}

func TestV2Config(t *testing.T) {
	parallel(t)
	v4 := netip.MustParseAddrPort("127.0.0.1:21001")
	for name, pc := range map[string]PeerConfig{
		"IPv6":           {Addr: netip.MustParseAddrPort("[::1]:21001"), Protocol: ProtocolV2},
		"BoxKey on v3":   {Addr: v4, BoxKey: make([]byte, 32)},
		"short BoxKey":   {Addr: v4, Protocol: ProtocolV2, BoxKey: make([]byte, 31)},
		"low-order key":  {Addr: v4, Protocol: ProtocolV2, BoxKey: make([]byte, 32)},
		"short pin":      {Addr: v4, Protocol: ProtocolV2, PublicKey: make([]byte, 31)},
		"other protocol": {Addr: v4, Protocol: 1},
	} {
		if _, err := Listen("udp4", "127.0.0.1:0", &Config{Peers: []PeerConfig{pc}}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	for name, cfg := range map[string]*Config{
		"short V2BoxPrivateKey": {V2BoxPrivateKey: make([]byte, 16)},
		"empty V2BoxPrivateKey": {V2BoxPrivateKey: []byte{}},
		"short V2SigningKey":    {V2SigningKey: make([]byte, 32)},
	} {
		if _, err := Listen("udp4", "127.0.0.1:0", cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	// Derived from the identity by default; explicit keys when given.
	id := GenerateIdentity()
	c := listenT(t, "udp4", "127.0.0.1:0", &Config{Identity: id})
	box, sign := c.V2PublicKeys()
	if d := v2.DeriveKeys(id); !bytes.Equal(box, d.BoxPublic[:]) || !bytes.Equal(sign, id.Public().(ed25519.PublicKey)) {
		t.Fatal("v2 keys not derived from the identity")
	}
	var priv [32]byte
	rand.Read(priv[:])
	signKey := GenerateIdentity()
	c2 := listenT(t, "udp4", "127.0.0.1:0", &Config{V2BoxPrivateKey: priv[:], V2SigningKey: signKey})
	box, sign = c2.V2PublicKeys()
	if want := v2.NewKeys(&priv, signKey); !bytes.Equal(box, want.BoxPublic[:]) || !bytes.Equal(sign, signKey.Public().(ed25519.PublicKey)) {
		t.Fatal("explicit v2 keys not used")
	}
	if c2.v2.Active() {
		t.Fatal("v2 path active without v2 peers")
	}
}

// TestV2KeyRefresh: our key exchange is resent with a backoff until the
// reference shows it holds our keys, then every v2.KeyRefreshInterval, at
// once after a Rebind (it names the new port), and datagrams waiting for
// a box key are dropped after v2.KeyWait. The schedule is driven by moving
// the peer's timestamps back rather than by waiting.
func TestV2KeyRefresh(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	vp := c.v2.Lookup(r.addr())
	back := vp.Backdate
	if _, err := c.WriteToUDPAddrPort([]byte("waits"), r.addr()); err != nil {
		t.Fatal(err)
	}
	back(v2.KeyWait)
	c.v2Tick(c.now()) // as housekeeping does
	if st := c.Stats(); st.Drops.HandshakeTimeout != 1 {
		t.Fatalf("queued datagram not dropped: %+v", st)
	}

	keyed(t, c, r) // not yet heard sealed: retries at 1 s, 2 s, ...
	back(v2.FirstRetry)
	r.readKx(c)
	back(2 * v2.FirstRetry)
	r.readKx(c)
	r.send(r.snd, c, r.sealed(c, "heard", nil))
	expectRead(t, c, "heard", r.addr())
	back(v2.KeyRefreshInterval)
	r.readKx(c)

	if err := c.Rebind("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	r.readKx(c) // checks the port it names: the new one
	r.send(r.snd, c, r.sealed(c, "rebound", nil))
	expectRead(t, c, "rebound", r.addr())

	// WriteBatch and Broadcast take the v2 path too.
	if n, err := c.WriteBatch([]Message{{Buf: []byte("b1"), Addr: r.addr()}, {Buf: []byte("b2"), Addr: r.addr()}}); n != 2 || err != nil {
		t.Fatalf("WriteBatch: %d, %v", n, err)
	}
	if n, err := c.Broadcast([]byte("all")); n != 1 || err != nil {
		t.Fatalf("Broadcast: %d, %v", n, err)
	}
	for _, want := range []string{"b1", "b2", "all"} {
		if got := r.readSealed(c); string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// TestV2Garbage: mutations of every kind of v2 datagram, cut ones, random
// bytes, and a native hello from a v2 peer's own address (that address
// speaks v2 only) are dropped, never delivered, never answered, and the
// peer still works afterwards.
func TestV2Garbage(t *testing.T) {
	parallel(t)
	r := newFakeRef(t)
	c := v2Conn(t, nil, PeerConfig{Addr: r.addr()})
	keyed(t, c, r)
	seeds := [][]byte{
		r.sealed(c, "sealed", nil),
		r.sealed(c, "", v2.AppendKeyExchange(nil, r.keys.KeyExchange(r.port()))),
		r.plain("plain"),
		r.kx(r.port()),
	}
	var sent int
	for i := range 400 {
		d := bytes.Clone(seeds[i%len(seeds)])
		switch i % 3 {
		case 0: // flip a byte outside a plaintext frame's padding
			var b [2]byte
			rand.Read(b[:])
			d[int(b[0])%min(len(d), 60)] ^= 1 << (b[1] % 8)
		case 1: // cut
			var b [2]byte
			rand.Read(b[:])
			d = d[:(int(b[0])<<8|int(b[1]))%len(d)]
		case 2: // random bytes
			rand.Read(d)
		}
		r.send(r.snd, c, d)
		sent++
	}
	r.send(r.lis, c, helloDatagram(t))
	r.send(r.snd, c, r.sealed(c, "alive", nil))
	expectRead(t, c, "alive", r.addr())
	barrier(t, c)
	expectNothing(t, c, 10*time.Millisecond)
	if st := c.Stats(); st.DatagramsIn != 1 || st.Sessions != 1 {
		t.Fatalf("after %d bad datagrams: %+v", sent, st) // the one session is the barrier's
	}
	// Nothing was sent to the reference but what a key exchange may
	// answer: its own plaintext key exchanges, intact, are answered.
	r.lis.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	buf := make([]byte, 65536)
	for {
		n, _, err := r.lis.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if f, err := v2.DecodeFrame(buf[:n]); err != nil || f.Control == nil || f.Payload != nil {
			t.Fatalf("the Conn sent %d bytes that are not a key exchange", n)
		}
	}
}

// refZstd is the payload codec of the played reference: it compresses as
// a v2 Conn does and reads what a Conn sends, whatever its MaxPayload.
type refZstd struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func mustRefZstd(t testing.TB) *refZstd {
	t.Helper()
	enc, err := zstd.NewEncoder(zstd.SpeedDefault)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewDecoder(65535)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enc.Close(); dec.Close(); enc, dec = nil, nil }) // forgotten: see closeAtEnd
	return &refZstd{enc: enc, dec: dec}
}

func (z *refZstd) compress(dst, src []byte) []byte { return z.enc.Compress(dst, src) }

func (z *refZstd) decompress(dst, p []byte) ([]byte, error) {
	return z.dec.Decompress(make([]byte, 0, 65535), p)
}

// referenceAcceptsTimestamp is the reference's freshness rule (§6 step
// 3) at its clock refNow: accepted iff 0 ≤ refNow − ts ≤ 60 s.
func referenceAcceptsTimestamp(ts float64, refNow time.Time) bool {
	age := v2.UnixSeconds(refNow) - ts
	return !(age < 0 || age > v2.MaxAge.Seconds())
}
