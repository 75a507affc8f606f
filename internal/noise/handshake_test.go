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
