package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Helpers for tests that need the outcome of a handshake without Conns:
// one complete v4 exchange through internal/noise (whose own tests attack
// the messages byte by byte). The Conn's handshake rules are tested with
// Conns (handshake_conn_test.go and the rest).

const (
	hsInitIndex = 0x11111111
	hsRespIndex = 0x22222222
)

// hsIdentity is a fixed Ed25519 identity: the seed is 32 copies of seed.
func hsIdentity(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

// hsExch is one complete exchange: A (identity seed 1) initiates with
// hsInitIndex, B (identity seed 2) responds with hsRespIndex. Its keys
// are fresh each time (the ephemeral and static keys are random).
type hsExch struct {
	hello, reply, final []byte
	aKeys, bKeys        *sessionKeys
}

func hsExchange(t testing.TB) *hsExch {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	as, err := noise.NewStatic(hsIdentity(1), nil)
	must(err)
	bs, err := noise.NewStatic(hsIdentity(2), nil)
	must(err)
	init, err := noise.NewInitiation(noise.InitiatorConfig{Static: as, Index: hsInitIndex})
	must(err)
	x := &hsExch{hello: bytes.Clone(init.Hello())}
	h, err := noise.ParseHello(bytes.Clone(x.hello))
	must(err)
	resp, reply, err := noise.Respond(h, noise.ResponderConfig{Static: bs, Index: hsRespIndex, Params: noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472}})
	must(err)
	x.reply = bytes.Clone(reply)
	bp, err := init.ReadReply(reply)
	must(err)
	final, ik, err := init.WriteFinal(&noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472})
	must(err)
	x.final = bytes.Clone(final)
	f, err := noise.ParseFinal(final)
	must(err)
	ap, rk, err := resp.ReadFinal(f)
	must(err)
	x.aKeys = &sessionKeys{send: ik.I2R, recv: ik.R2I, localIndex: hsInitIndex, remoteIndex: bp.Index, version: ProtocolVersion, initiator: true, peerIdentity: bp.Identity}
	x.bKeys = &sessionKeys{send: rk.R2I, recv: rk.I2R, localIndex: hsRespIndex, remoteIndex: hsInitIndex, version: ProtocolVersion, peerIdentity: ap.Identity}
	return x
}
