// Command metrics exports a vaultudp Conn's counters to Prometheus with
// github.com/prometheus/client_golang: a Collector that reads Conn.Stats
// (traffic, handshakes, keepalives, drops by reason, peers, sessions) and
// Conn.Peers (per peer: datagrams and bytes each way, whether it has a
// session, its last handshake, its last handshake failure) at each
// scrape. The program runs an echo exchange over plain UDP and over
// vaultudp with the same code, then prints the vaultudp server's metrics
// as a scrape of its /metrics endpoint returns them.
//
//	go run ./metrics
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vaultudp/vaultudp"
)

// Collector is a prometheus.Collector for one Conn. It holds no state of
// its own: every scrape reads the Conn.
type Collector struct {
	conn    *vaultudp.Conn
	perPeer bool

	datagramsIn, bytesIn, datagramsOut, bytesOut  *prometheus.Desc
	handshakes, rekeys, failures, cookies, verifs *prometheus.Desc
	silences, keepalivesSent, keepalivesIn        *prometheus.Desc
	drops                                         *prometheus.Desc
	peers, sessions, mtu, maxPayload              *prometheus.Desc

	peerDatagramsIn, peerBytesIn, peerDatagramsOut, peerBytesOut *prometheus.Desc
	peerEstablished, peerLastHandshake, peerFailure              *prometheus.Desc
}

// NewCollector returns a Collector for conn. constLabels tell several
// Conns apart (nil: none). perPeer adds one series per peer and metric,
// labelled with the peer's address: the number of series then grows with
// the peers (learned peers included, up to Config.MaxPeers), so turn it
// off for a server with many clients.
func NewCollector(conn *vaultudp.Conn, constLabels prometheus.Labels, perPeer bool) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("vaultudp_"+name, help, labels, constLabels)
	}
	return &Collector{
		conn:              conn,
		perPeer:           perPeer,
		datagramsIn:       d("datagrams_in_total", "Datagrams delivered to the application."),
		bytesIn:           d("bytes_in_total", "Payload bytes delivered to the application."),
		datagramsOut:      d("datagrams_out_total", "Datagrams the application wrote that were sent."),
		bytesOut:          d("bytes_out_total", "Payload bytes the application wrote that were sent."),
		handshakes:        d("handshakes_total", "Sessions established, either role."),
		rekeys:            d("rekeys_total", "Handshakes that replaced a live session."),
		failures:          d("handshake_failures_total", "Handshake initiations that timed out."),
		cookies:           d("cookies_sent_total", "Cookie replies sent under handshake load."),
		verifs:            d("verifications_total", "Hello signatures verified."),
		silences:          d("silences_total", "Handshakes started because a peer went silent."),
		keepalivesSent:    d("keepalives_sent_total", "Keepalives (empty sealed datagrams) sent."),
		keepalivesIn:      d("keepalives_received_total", "Keepalives received."),
		drops:             d("drops_total", "Datagrams dropped, by reason; none reached the application.", "reason"),
		peers:             d("peers", "Peers, configured and learned."),
		sessions:          d("sessions", "Live sessions."),
		mtu:               d("mtu_bytes", "Path MTU in use."),
		maxPayload:        d("max_payload_bytes", "Largest datagram a write accepts."),
		peerDatagramsIn:   d("peer_datagrams_in_total", "Datagrams from the peer delivered to the application.", "peer"),
		peerBytesIn:       d("peer_bytes_in_total", "Payload bytes from the peer delivered to the application.", "peer"),
		peerDatagramsOut:  d("peer_datagrams_out_total", "Datagrams the application wrote to the peer that were sent.", "peer"),
		peerBytesOut:      d("peer_bytes_out_total", "Payload bytes the application wrote to the peer that were sent.", "peer"),
		peerEstablished:   d("peer_established", "1 if the peer has a session now.", "peer", "configured", "policy"),
		peerLastHandshake: d("peer_last_handshake_timestamp_seconds", "Unix time of the peer's last handshake (absent before the first).", "peer"),
		peerFailure:       d("peer_handshake_failed", "1 if the peer's last handshake failed, by reason (absent if none failed).", "peer", "reason"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.datagramsIn, c.bytesIn, c.datagramsOut, c.bytesOut,
		c.handshakes, c.rekeys, c.failures, c.cookies, c.verifs,
		c.silences, c.keepalivesSent, c.keepalivesIn, c.drops,
		c.peers, c.sessions, c.mtu, c.maxPayload,
	} {
		ch <- d
	}
	if c.perPeer {
		for _, d := range []*prometheus.Desc{
			c.peerDatagramsIn, c.peerBytesIn, c.peerDatagramsOut, c.peerBytesOut,
			c.peerEstablished, c.peerLastHandshake, c.peerFailure,
		} {
			ch <- d
		}
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.conn.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.datagramsIn, st.DatagramsIn)
	counter(c.bytesIn, st.BytesIn)
	counter(c.datagramsOut, st.DatagramsOut)
	counter(c.bytesOut, st.BytesOut)
	counter(c.handshakes, st.Handshakes)
	counter(c.rekeys, st.Rekeys)
	counter(c.failures, st.HandshakeFailures)
	counter(c.cookies, st.CookiesSent)
	counter(c.verifs, st.Verifications)
	counter(c.silences, st.Silences)
	counter(c.keepalivesSent, st.KeepalivesSent)
	counter(c.keepalivesIn, st.KeepalivesIn)
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"malformed", st.Drops.Malformed},
		{"replay", st.Drops.Replay},
		{"auth", st.Drops.Auth},
		{"policy", st.Drops.Policy},
		{"rejected", st.Drops.Rejected},
		{"stale", st.Drops.Stale},
		{"rate_limit", st.Drops.RateLimit},
		{"queue_full", st.Drops.QueueFull},
		{"too_large", st.Drops.TooLarge},
		{"unknown_session", st.Drops.UnknownSession},
		{"handshake_timeout", st.Drops.HandshakeTimeout},
		{"peer_limit", st.Drops.PeerLimit},
		{"v2_send_limit", st.Drops.V2SendLimit},
		{"unvalidated", st.Drops.Unvalidated},
		{"write_queue_full", st.Drops.WriteQueueFull},
		{"write_backoff", st.Drops.WriteBackoff},
		{"write_peer_limit", st.Drops.WritePeerLimit},
	} {
		counter(c.drops, r.n, r.reason)
	}
	gauge(c.peers, float64(st.Peers))
	gauge(c.sessions, float64(st.Sessions))
	gauge(c.mtu, float64(st.MTU))
	gauge(c.maxPayload, float64(st.MaxPayload))
	if !c.perPeer {
		return
	}
	for _, p := range c.conn.Peers() {
		addr := p.Addr.String()
		counter(c.peerDatagramsIn, p.DatagramsIn, addr)
		counter(c.peerBytesIn, p.BytesIn, addr)
		counter(c.peerDatagramsOut, p.DatagramsOut, addr)
		counter(c.peerBytesOut, p.BytesOut, addr)
		established := 0.0
		if p.Established {
			established = 1
		}
		gauge(c.peerEstablished, established, addr, fmt.Sprint(p.Configured), p.Policy.String())
		if !p.LastHandshake.IsZero() {
			gauge(c.peerLastHandshake, float64(p.LastHandshake.UnixNano())/1e9, addr)
		}
		if p.LastFailure != nil {
			reason := "other"
			switch {
			case errors.Is(p.LastFailure, vaultudp.ErrPeerRejected):
				reason = "rejected"
			case errors.Is(p.LastFailure, vaultudp.ErrHandshakeTimeout):
				reason = "timeout"
			}
			gauge(c.peerFailure, 1, addr, reason)
		}
	}
}

// Transport is how the example makes its sockets: plain UDP or vaultudp.
type Transport struct {
	Name   string
	Listen func(address string) (net.PacketConn, error)
}

// UDP is plain, unencrypted UDP.
var UDP = Transport{"udp", func(a string) (net.PacketConn, error) { return net.ListenPacket("udp4", a) }}

// Vault is vaultudp with every default.
var Vault = Transport{"vaultudp", func(a string) (net.PacketConn, error) { return vaultudp.Listen("udp4", a, nil) }}

// Messages are what the example's client sends.
var Messages = [][]byte{[]byte("hello"), bytes.Repeat([]byte("m"), 1000), {}, []byte("bye")}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	plain, err := runEcho(ctx, UDP, Messages, nil)
	if err != nil {
		log.Fatal(err)
	}
	var scrape string
	sealed, err := runEcho(ctx, Vault, Messages, func(server, _ net.PacketConn) error {
		reg := prometheus.NewRegistry()
		reg.MustRegister(NewCollector(server.(*vaultudp.Conn), prometheus.Labels{"conn": "server"}, true))
		scrape, err = scrapeHTTP(ctx, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("echoed %d datagrams over udp and %d over vaultudp, same bytes: %v\n",
		len(plain), len(sealed), fmt.Sprint(plain) == fmt.Sprint(sealed))
	for _, line := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(line, "vaultudp_") && !strings.Contains(line, "drops_total") {
			fmt.Println(line)
		}
	}
}

// runEcho starts an echo server over tr, sends msgs from a client over tr
// and returns the echoes, in order. Before closing, it calls inspect
// (when not nil) with the server's and the client's PacketConns.
func runEcho(ctx context.Context, tr Transport, msgs [][]byte, inspect func(server, client net.PacketConn) error) ([][]byte, error) {
	server, err := tr.Listen("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer server.Close()
	client, err := tr.Listen("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer client.Close()
	echoed, err := Exchange(ctx, server, client, msgs)
	if err != nil {
		return nil, err
	}
	if inspect != nil {
		if err := inspect(server, client); err != nil {
			return nil, err
		}
	}
	return echoed, nil
}

// Exchange has server echo msgs sent one at a time by client and returns
// the echoes. It is ordinary net.PacketConn code.
func Exchange(ctx context.Context, server, client net.PacketConn, msgs [][]byte) ([][]byte, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	server.SetReadDeadline(deadline)
	client.SetReadDeadline(deadline)
	defer server.SetReadDeadline(time.Time{})
	defer client.SetReadDeadline(time.Time{})
	served := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for range msgs {
			n, from, err := server.ReadFrom(buf)
			if err == nil {
				_, err = server.WriteTo(buf[:n], from)
			}
			if err != nil {
				served <- err
				return
			}
		}
		served <- nil
	}()
	var out [][]byte
	buf := make([]byte, 2048)
	for _, m := range msgs {
		if _, err := client.WriteTo(m, server.LocalAddr()); err != nil {
			return nil, err
		}
		n, _, err := client.ReadFrom(buf)
		if err != nil {
			return nil, err
		}
		out = append(out, bytes.Clone(buf[:n]))
	}
	return out, <-served
}

// scrapeHTTP serves h on a loopback port and GETs it once, as Prometheus
// would.
func scrapeHTTP(ctx context.Context, h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", errors.New("scrape: " + resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
