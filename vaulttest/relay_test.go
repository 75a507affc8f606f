package vaulttest

import (
	"net"
	"testing"
	"time"
)

// relaySetup returns a client, a server and a relay between them on one
// network.
func relaySetup(t *testing.T, toServer, toClient Faults) (client, server *PacketConn, r *Relay) {
	t.Helper()
	n := NewNetwork()
	client = mustListen(t, n, "10.0.0.1:1000")
	server = mustListen(t, n, "10.0.0.3:53")
	front := mustListen(t, n, "10.0.0.2:1")
	back := mustListen(t, n, "10.0.0.2:2")
	r = NewRelay(front, back, server.LocalAddr(), toServer, toClient)
	t.Cleanup(func() { r.Close() })
	return client, server, r
}

func TestRelayRoundTrip(t *testing.T) {
	client, server, r := relaySetup(t, Faults{}, Faults{})
	if got := r.Addr().String(); got != "10.0.0.2:1" {
		t.Errorf("Addr = %s, want 10.0.0.2:1", got)
	}
	client.WriteTo([]byte("query"), r.Addr())
	got, from := read(t, server)
	if string(got) != "query" || from.String() != "10.0.0.2:2" {
		t.Fatalf("server read %q from %v, want query from 10.0.0.2:2", got, from)
	}
	server.WriteTo([]byte("answer"), from)
	got, from = read(t, client)
	if string(got) != "answer" || from.String() != "10.0.0.2:1" {
		t.Fatalf("client read %q from %v, want answer from 10.0.0.2:1", got, from)
	}
	if c := r.ToServer().Counts(); c.Sent != 1 {
		t.Errorf("ToServer Counts = %+v", c)
	}
	if c := r.ToClient().Counts(); c.Sent != 1 {
		t.Errorf("ToClient Counts = %+v", c)
	}
}

func TestRelayFaultsEachDirection(t *testing.T) {
	client, server, r := relaySetup(t, Faults{Truncate: 1, Seed: 1}, Faults{Corrupt: 1, Seed: 2})
	client.WriteTo([]byte("0123456789"), r.Addr())
	got, from := read(t, server)
	if len(got) >= 10 || string(got) != "0123456789"[:len(got)] {
		t.Errorf("server read %q, want a truncated datagram", got)
	}
	server.WriteTo([]byte("answer"), from)
	got, _ = read(t, client)
	if len(got) != 6 || string(got) == "answer" {
		t.Errorf("client read %q, want a corrupted datagram", got)
	}
	if ev := r.ToClient().Events(); len(ev) != 1 || ev[0].Faults != Corrupted {
		t.Errorf("ToClient events = %+v", ev)
	}
}

func TestRelayIgnoresStrangers(t *testing.T) {
	client, server, r := relaySetup(t, Faults{}, Faults{})
	// Before any client: the server's datagram has nowhere to go.
	back := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 2}
	server.WriteTo([]byte("early"), back)
	// A stranger writing to the back conn is not the server.
	stranger := mustListen(t, server.network, "10.0.0.9:9")
	stranger.WriteTo([]byte("stranger"), back)
	// Wait for the relay to discard both before a client appears.
	for start := time.Now(); r.Discarded() < 2; time.Sleep(time.Millisecond) {
		if time.Since(start) > bound {
			t.Fatalf("Discarded = %d after %v, want 2", r.Discarded(), bound)
		}
	}
	client.WriteTo([]byte("hello"), r.Addr())
	if got, _ := read(t, server); string(got) != "hello" {
		t.Fatalf("server read %q", got)
	}
	server.WriteTo([]byte("late"), back)
	if got, _ := read(t, client); string(got) != "late" {
		t.Errorf("client read %q, want late (early and stranger discarded)", got)
	}
	if c := r.ToClient().Counts(); c.Writes != 1 || r.Discarded() != 2 {
		t.Errorf("ToClient Counts = %+v, Discarded = %d; want 1 write, 2 discarded", c, r.Discarded())
	}
}

func TestRelayClose(t *testing.T) {
	_, _, r := relaySetup(t, Faults{}, Faults{})
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The goroutines have returned: goleak in TestMain checks it too.
	_, err := r.ToServer().WriteTo([]byte("x"), &net.UDPAddr{IP: net.IPv4(10, 0, 0, 3), Port: 53})
	expectClosed(t, "WriteTo after Close", err)
}
