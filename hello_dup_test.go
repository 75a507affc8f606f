package vaultudp

import (
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// TestDuplicateHelloAnsweredOnce: an initiator's hello that arrives again
// (sent again with a second cookie under load, duplicated on the path, or
// replayed from its address) is not answered a second time: the reply
// that would come of it pushed out the reply to the initiator's other
// live hello, which the initiator was answering, and its final message
// found nothing until its attempt failed (TestProxyBurst300 in CI, under
// load: the client proxy's flows met it now and then).
func TestDuplicateHelloAnsweredOnce(t *testing.T) {
	parallel(t)
	s := listenT(t, "udp4", "127.0.0.1:0", nil)
	raw := rawUDP(t)
	raw.SetReadDeadline(time.Now().Add(waitLong))
	buf := make([]byte, 65536)
	readType := func(want byte) []byte {
		t.Helper()
		for range 20 {
			n, _, err := raw.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("waiting for a datagram of type %d: %v (server %+v)", want, err, s.Stats())
			}
			if n > 1 && buf[1] == want {
				return append([]byte(nil), buf[:n]...)
			}
		}
		t.Fatalf("no datagram of type %d among 20", want)
		return nil
	}
	send := func(d []byte) {
		t.Helper()
		if _, err := raw.WriteToUDPAddrPort(d, addrOf(s)); err != nil {
			t.Fatal(err)
		}
	}
	// The initiator's first hello, then its retry (a new hello): the
	// server answers both and keeps both replies.
	first, retry := newStrangerInit(t, 1), newStrangerInit(t, 2)
	send(first.Hello())
	reply1 := readType(typeReply)
	send(retry.Hello())
	readType(typeReply)
	// The retry again.
	send(retry.Hello())
	if took, ok := waitFor(waitLong, func() bool { st := s.Stats(); return st.Drops.Stale == 1 || st.Verifications == 3 }); !ok {
		t.Fatalf("the repeated hello not handled after %v", took)
	}
	if v := s.Stats().Verifications; v != 2 {
		t.Fatalf("%d hellos answered, want 2: the repeated one was answered again", v)
	}
	// The initiator answers the first reply: the server still has it.
	if _, err := first.ReadReply(reply1); err != nil {
		t.Fatal(err)
	}
	final, _, err := first.WriteFinal(&noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472})
	if err != nil {
		t.Fatal(err)
	}
	send(final)
	readType(typeSealed) // the confirmation
	if h := s.Stats().Handshakes; h != 1 {
		t.Fatalf("%d handshakes completed, want 1", h)
	}
}
