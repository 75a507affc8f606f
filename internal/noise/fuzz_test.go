package noise

import (
	"bytes"
	"testing"
)

// The fuzz targets feed arbitrary bytes to each message's parser and
// to the cryptographic step behind it, seeded with genuine messages.
// Each checks that nothing panics, that a refusal changes no state (the
// genuine message still completes after the fuzzed one), and that what
// is accepted is well formed.

// fuzzFixture is one handshake's fixed state: a pending initiation and
// a pending response, remade from the same seeds when an input
// completes one of them.
func fuzzFixture(t testing.TB) (*run, side, side) {
	a, b := stdSides("fuzz")
	r, err := tryHandshake(a, b)
	if err != nil {
		t.Fatal(err)
	}
	// Remake the pending halves: the run above finished them.
	a, b = stdSides("fuzz")
	st, _ := NewStatic(a.id, a.ent)
	r.init, _ = NewInitiation(InitiatorConfig{Static: st, Index: a.index, Entropy: a.ent})
	h, _ := ParseHello(r.init.Hello())
	rs, _ := NewStatic(b.id, b.ent)
	r.resp, _, _ = Respond(h, ResponderConfig{Static: rs, Index: b.index, Entropy: b.ent, Params: b.param})
	return r, a, b
}

func FuzzParseHello(f *testing.F) {
	r, _, b := fuzzFixture(f)
	f.Add(r.hello)
	f.Add(r.hello[:HelloLen-1])
	f.Add(append(bytes.Clone(r.hello), 1, 2, 3))
	rs, _ := NewStatic(b.id, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHello(data)
		if err != nil {
			return
		}
		if len(h.Versions) == 0 || len(h.Versions) > maxVersions || len(h.Cookie) != CookieLen || h.SenderIndex == 0 {
			t.Fatalf("accepted a malformed hello: %+v", h)
		}
		_, reply, err := Respond(h, ResponderConfig{Static: rs, Index: 7})
		if err == nil && len(reply) > len(data) {
			t.Fatalf("reply of %d bytes to a hello of %d", len(reply), len(data))
		}
	})
}

func FuzzReadReply(f *testing.F) {
	r, _, _ := fuzzFixture(f)
	f.Add(r.reply)
	f.Add(r.reply[:len(r.reply)-1])
	f.Add(r.reply[:8])
	fresh := func() *Initiation { x, _, _ := fuzzFixture(f); return x.init }
	init := fresh()
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := init.ReadReply(data)
		if err != nil {
			return
		}
		if p.Index == 0 || len(p.Identity) != 32 || len(p.Params.Versions) == 0 {
			t.Fatalf("accepted a malformed reply: %+v", p)
		}
		init = fresh() // that one is finished
	})
}

func FuzzReadFinal(f *testing.F) {
	r, _, _ := fuzzFixture(f)
	f.Add(r.final)
	f.Add(append(bytes.Clone(r.final), 0x04, 0x01, 0, 0))
	f.Add(r.final[:20])
	fresh := func() *Response { x, _, _ := fuzzFixture(f); return x.resp }
	resp := fresh()
	f.Fuzz(func(t *testing.T, data []byte) {
		fm, err := ParseFinal(data)
		if err != nil {
			return
		}
		if len(fm.msg)+len(fm.Sealed)+headerLen != len(data) {
			t.Fatal("final split loses bytes")
		}
		p, _, err := resp.ReadFinal(fm)
		if err != nil {
			return
		}
		if len(p.Identity) != 32 {
			t.Fatalf("accepted a malformed final: %+v", p)
		}
		resp = fresh()
	})
}

func FuzzParams(f *testing.F) {
	f.Add(appendParams(nil, &Params{MaxUnfragmented: 1472, MaxDatagram: 65507, HasToken: true, Versions: []byte{4}}))
	f.Add([]byte{0, 1, 2})
	f.Add([]byte{9, 3, 1, 2, 3, 1, 2, 5, 220})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseParams(data)
		if err != nil {
			return
		}
		// What parses re-encodes to something that parses the same.
		q, err := parseParams(appendParams(nil, &p))
		if err != nil || q.MaxDatagram != p.MaxDatagram || q.MaxUnfragmented != p.MaxUnfragmented ||
			q.HasToken != p.HasToken || q.ResetToken != p.ResetToken || !bytes.Equal(q.Versions, p.Versions) {
			t.Fatalf("round trip: %+v -> %+v (%v)", p, q, err)
		}
	})
}

func FuzzParseCookie(f *testing.F) {
	f.Add(CookieMsg(5, bytes.Repeat([]byte{1}, CookieLen)))
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, c, err := ParseCookie(data)
		if err != nil {
			return
		}
		if !bytes.Equal(CookieMsg(idx, c), data) {
			t.Fatal("cookie message does not round trip")
		}
	})
}
