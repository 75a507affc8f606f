//go:build !linux || vaultudp_portable

package vaultudp

import (
	"net/netip"
	"testing"
	"time"
)

// The portable build (every system but Linux, and Linux with the
// vaultudp_portable tag, which is how CI runs this code) reads and writes
// a *net.UDPConn one datagram per call: no batch reads, GSO, GRO or
// packet info, even on a wildcard socket, but deadlines that interrupt a
// read, so that application goroutines read the socket themselves. A
// Conn over it exchanges datagrams singly and in batches. This guards
// against the tag silently building Linux's I/O.
func TestPortableBuildCaps(t *testing.T) {
	parallel(t)
	for _, bind := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		c := listenT(t, "udp4", bind, nil)
		got := c.sock.Load().Caps()
		if got.BatchRead || got.GSO || got.GRO || got.PacketInfo || !got.Deadlines {
			t.Errorf("Caps on %s = %+v; want Deadlines alone (and IPv4Only)", bind, got)
		}
	}
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	to := addrOf(b)
	if _, err := a.WriteToUDPAddrPort([]byte("one"), to); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "one", addrOf(a))
	ms := make([]Message, 8)
	for i := range ms {
		ms[i] = Message{Buf: []byte{byte('a' + i)}, Addr: to}
	}
	if n, err := a.WriteBatch(ms); n != len(ms) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got := 0
	for got < len(ms) {
		in := make([]Message, len(ms))
		for i := range in {
			in[i].Buf = make([]byte, 64)
		}
		b.SetReadDeadline(time.Now().Add(waitLong))
		n, err := b.ReadBatch(in)
		if err != nil {
			t.Fatalf("ReadBatch after %d: %v", got, err)
		}
		for _, m := range in[:n] {
			if m.N != 1 || m.Buf[0] != byte('a'+got) || m.Addr != addrOf(a) {
				t.Fatalf("datagram %d: %q from %v", got, m.Buf[:m.N], m.Addr)
			}
			got++
		}
	}

	// Route MTUs are remembered: the second lookup is the cache's.
	c := listenT(t, "udp4", "127.0.0.1:0", nil)
	lo := netip.MustParseAddrPort("127.0.0.1:9")
	m1, ok1 := c.routes.mtu(lo)
	m2, ok2 := c.routes.mtu(lo)
	c.routes.mu.Lock()
	entries := len(c.routes.m)
	c.routes.mu.Unlock()
	if m1 != m2 || ok1 != ok2 || c.routes.ttl <= 0 || entries != 1 {
		t.Errorf("route MTU %d, %v then %d, %v; TTL %v, %d entries; want the same twice, a TTL and 1 entry",
			m1, ok1, m2, ok2, c.routes.ttl, entries)
	}
	t.Logf("route MTU to %v: %d (%v)", lo, m1, ok1)
}
