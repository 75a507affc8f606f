package vaultudp

import (
	"bytes"
	"testing"
	"time"
)

// TestReview6KeptFinalResentOnce: a client restarts on its port with a
// new key and writes at once, so its datagram rides in its final message,
// which the server keeps while the old identity's liveness challenge
// waits (commitFinal, holdCoalescedLocked). The client's retry interval
// (200 ms) is shorter than the server's liveness wait (500 ms): it sends
// the same final message, with the same datagram, twice more before the
// server's timer judges it again. Each copy is held; once the new
// identity takes the address, the application reads the datagram once,
// and nothing more.
func TestReview6KeptFinalResentOnce(t *testing.T) {
	parallel(t)
	s := listenT(t, "udp4", "127.0.0.1:0", &Config{HandshakeTimeout: 10 * time.Second})
	port, c2 := clientRestarted(t, s, &Config{HandshakeTimeout: time.Second})
	before := s.Stats()
	if _, err := c2.WriteToUDPAddrPort([]byte("new key"), addrOf(s)); err != nil {
		t.Fatal(err)
	}
	expectRead(t, s, "new key", port)
	expectNothing(t, s, 700*time.Millisecond)
	after := s.Stats()
	t.Logf("rejected %d, replay %d, unknown session %d", after.Drops.Rejected-before.Drops.Rejected, after.Drops.Replay-before.Drops.Replay, after.Drops.UnknownSession-before.Drops.UnknownSession)
	if !bytes.Equal(keyAt(s, port), c2.PublicKey()) {
		t.Errorf("the server's peer at %v has the old key", port)
	}
}
