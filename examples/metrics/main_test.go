package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vaultudp/vaultudp"
)

// The echo code gets the same result over plain UDP and vaultudp; over
// vaultudp the collector's values are the application's own counts, and
// move with traffic.
func TestMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plain, err := runEcho(ctx, UDP, Messages, nil)
	if err != nil {
		t.Fatalf("udp: %v", err)
	}

	sealed, err := runEcho(ctx, Vault, Messages, func(server, client net.PacketConn) error {
		conn := server.(*vaultudp.Conn)
		col := NewCollector(conn, nil, true)
		if n := testutil.CollectAndCount(col); n < 31 {
			t.Errorf("%d series, want at least 31", n)
		}
		if probs, err := testutil.CollectAndLint(col); err != nil || len(probs) > 0 {
			t.Errorf("lint: %v %+v", err, probs)
		}
		var bytesIn int
		for _, m := range Messages {
			bytesIn += len(m)
		}
		peer := conn.Peers()[0]
		check := func(datagrams, bytes int) {
			t.Helper()
			want := fmt.Sprintf(`
# HELP vaultudp_datagrams_in_total Datagrams delivered to the application.
# TYPE vaultudp_datagrams_in_total counter
vaultudp_datagrams_in_total %d
# HELP vaultudp_bytes_in_total Payload bytes delivered to the application.
# TYPE vaultudp_bytes_in_total counter
vaultudp_bytes_in_total %d
# HELP vaultudp_datagrams_out_total Datagrams the application wrote that were sent.
# TYPE vaultudp_datagrams_out_total counter
vaultudp_datagrams_out_total %d
# HELP vaultudp_peers Peers, configured and learned.
# TYPE vaultudp_peers gauge
vaultudp_peers 1
# HELP vaultudp_peer_established 1 if the peer has a session now.
# TYPE vaultudp_peer_established gauge
vaultudp_peer_established{configured="false",peer=%[4]q,policy="require-encryption"} 1
# HELP vaultudp_peer_datagrams_in_total Datagrams from the peer delivered to the application.
# TYPE vaultudp_peer_datagrams_in_total counter
vaultudp_peer_datagrams_in_total{peer=%[4]q} %[1]d
# HELP vaultudp_peer_bytes_in_total Payload bytes from the peer delivered to the application.
# TYPE vaultudp_peer_bytes_in_total counter
vaultudp_peer_bytes_in_total{peer=%[4]q} %[2]d
# HELP vaultudp_peer_datagrams_out_total Datagrams the application wrote to the peer that were sent.
# TYPE vaultudp_peer_datagrams_out_total counter
vaultudp_peer_datagrams_out_total{peer=%[4]q} %[1]d
# HELP vaultudp_peer_bytes_out_total Payload bytes the application wrote to the peer that were sent.
# TYPE vaultudp_peer_bytes_out_total counter
vaultudp_peer_bytes_out_total{peer=%[4]q} %[2]d
`, datagrams, bytes, datagrams, peer.Addr.String())
			if err := testutil.CollectAndCompare(col, strings.NewReader(want),
				"vaultudp_datagrams_in_total", "vaultudp_bytes_in_total", "vaultudp_datagrams_out_total",
				"vaultudp_peers", "vaultudp_peer_established", "vaultudp_peer_datagrams_in_total",
				"vaultudp_peer_bytes_in_total", "vaultudp_peer_datagrams_out_total", "vaultudp_peer_bytes_out_total"); err != nil {
				t.Error(err)
			}
			// (A hello retried on a loaded machine makes a second
			// handshake: at least one.)
			if conn.Stats().Handshakes < 1 {
				t.Error("no handshake counted")
			}
		}
		check(len(Messages), bytesIn)

		// More traffic: the values move by exactly that much.
		more := [][]byte{[]byte("again"), []byte("and again")}
		if _, err := Exchange(ctx, server, client, more); err != nil {
			return err
		}
		check(len(Messages)+2, bytesIn+len("again")+len("and again"))

		// And over HTTP, as Prometheus scrapes it.
		reg := prometheus.NewRegistry()
		reg.MustRegister(NewCollector(conn, prometheus.Labels{"conn": "server"}, true))
		body, err := scrapeHTTP(ctx, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if err != nil {
			return err
		}
		if !strings.Contains(body, fmt.Sprintf(`vaultudp_datagrams_in_total{conn="server"} %d`, len(Messages)+2)) ||
			!strings.Contains(body, `vaultudp_peer_last_handshake_timestamp_seconds{conn="server",peer="`+peer.Addr.String()+`"}`) {
			t.Errorf("scrape:\n%s", body)
		}

		// A peer whose key is refused shows up with the reason.
		other, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
		if err != nil {
			return err
		}
		defer other.Close()
		otherAddr := other.LocalAddr().(*net.UDPAddr).AddrPort()
		wrong := vaultudp.GenerateIdentity().Public().(ed25519.PublicKey)
		if err := conn.AddPeer(vaultudp.PeerConfig{Addr: otherAddr, PublicKey: wrong}); err != nil {
			return err
		}
		if err := conn.Handshake(ctx, otherAddr); !errors.Is(err, vaultudp.ErrPeerRejected) {
			t.Errorf("handshake with a wrong pinned key: %v", err)
		}
		want := fmt.Sprintf(`
# HELP vaultudp_peer_handshake_failed 1 if the peer's last handshake failed, by reason (absent if none failed).
# TYPE vaultudp_peer_handshake_failed gauge
vaultudp_peer_handshake_failed{peer=%q,reason="rejected"} 1
`, otherAddr)
		if err := testutil.CollectAndCompare(col, strings.NewReader(want), "vaultudp_peer_handshake_failed"); err != nil {
			t.Error(err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("vaultudp: %v", err)
	}
	if !slices.EqualFunc(plain, sealed, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Fatalf("echoes differ: udp %q, vaultudp %q", plain, sealed)
	}
}
