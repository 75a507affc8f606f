package noise

import (
	"bytes"
	"testing"
)

func TestHandshakeCompletes(t *testing.T) {
	a, b := stdSides("complete")
	r := handshake(t, a, b)
	if r.iKeys.I2R != r.rKeys.I2R || r.iKeys.R2I != r.rKeys.R2I || r.iKeys.Hash != r.rKeys.Hash {
		t.Fatal("the two sides derived different keys")
	}
	if r.iKeys.I2R == r.iKeys.R2I {
		t.Fatal("one key for both directions")
	}
	if !r.iPeer.Identity.Equal(b.id.Public()) || !r.rPeer.Identity.Equal(a.id.Public()) {
		t.Fatal("identities not revealed to the peer")
	}
	if r.iPeer.Index != b.index || r.resp.RemoteIndex() != a.index {
		t.Fatalf("indexes: initiator learned %x, responder %x", r.iPeer.Index, r.resp.RemoteIndex())
	}
	if r.iPeer.Params.MaxDatagram != 65507 || r.iPeer.Params.ResetToken != b.param.ResetToken || !bytes.Equal(r.iPeer.Params.Versions, []byte{Version}) {
		t.Fatalf("responder parameters: %+v", r.iPeer.Params)
	}
	if r.rPeer.Params.ResetToken != a.param.ResetToken || r.rPeer.Params.MaxUnfragmented != 1472 {
		t.Fatalf("initiator parameters: %+v", r.rPeer.Params)
	}
	t.Logf("hello %d bytes, reply %d, final %d (protocol %s)", len(r.hello), len(r.reply), len(r.final), ProtocolName)
	if len(r.hello) != HelloLen || len(r.reply) > len(r.hello) || len(r.final) > 1472 {
		t.Fatalf("sizes: hello %d, reply %d, final %d", len(r.hello), len(r.reply), len(r.final))
	}
}

// TestFinalCoalescesSealed: a sealed datagram appended to the final
// message comes back whole, apart from message 3, and message 3 still
// reads.
func TestFinalCoalescesSealed(t *testing.T) {
	a, b := stdSides("coalesce")
	st, _ := NewStatic(a.id, nil)
	init, err := NewInitiation(InitiatorConfig{Static: st, Index: a.index})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ParseHello(init.Hello())
	rs, _ := NewStatic(b.id, nil)
	resp, reply, err := Respond(h, ResponderConfig{Static: rs, Index: b.index})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := init.ReadReply(reply); err != nil {
		t.Fatal(err)
	}
	final, ik, err := init.WriteFinal(&a.param)
	if err != nil {
		t.Fatal(err)
	}
	sealed := append([]byte{Version, 0x01, 0, 0, 0x55, 0x66, 0x77, 0x88}, bytes.Repeat([]byte{0xee}, 40)...)
	f, err := ParseFinal(append(bytes.Clone(final), sealed...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.Sealed, sealed) {
		t.Fatalf("coalesced datagram %x, want %x", f.Sealed, sealed)
	}
	_, rk, err := resp.ReadFinal(f)
	if err != nil || *rk != *ik {
		t.Fatalf("final with a coalesced datagram: %v", err)
	}
}

// TestCrossedHellos: of two hellos sent at once, exactly one side keeps
// initiating, and both agree which.
func TestCrossedHellos(t *testing.T) {
	for i := range 16 {
		a, b := stdSides("crossed" + string(rune('a'+i)))
		sa, _ := NewStatic(a.id, a.ent)
		sb, _ := NewStatic(b.id, b.ent)
		ia, err := NewInitiation(InitiatorConfig{Static: sa, Index: 1, Entropy: a.ent})
		if err != nil {
			t.Fatal(err)
		}
		ib, err := NewInitiation(InitiatorConfig{Static: sb, Index: 2, Entropy: b.ent})
		if err != nil {
			t.Fatal(err)
		}
		ha, _ := ParseHello(ia.Hello())
		hb, _ := ParseHello(ib.Hello())
		if !bytes.Equal(ha.Ephemeral(), ia.Ephemeral()) {
			t.Fatal("the parsed hello's ephemeral is not the initiation's")
		}
		if ia.KeepsInitiating(hb) == ib.KeepsInitiating(ha) {
			t.Fatalf("both sides keep initiating: %v", ia.KeepsInitiating(hb))
		}
	}
}
