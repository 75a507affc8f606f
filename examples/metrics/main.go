// Command metrics exports a vaultudp Conn's counters to Prometheus with
// github.com/prometheus/client_golang: a Collector that reads Conn.Stats
// (traffic, handshakes, drops by reason, peers, sessions) and Conn.Peers
// (one series per peer: whether it has a session, its last handshake) at
// each scrape. The program runs an echo exchange over plain UDP and over
// vaultudp with the same code, then prints the vaultudp server's metrics
// as a scrape of its /metrics endpoint returns them.
//
//	go run ./metrics
//
// Per-peer traffic counters: PeerInfo has none yet (it has Addr,
// PublicKey, Policy, Protocol, Configured, Established, LastHandshake),
// so the per-peer series are the peer's state; traffic is per Conn.
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
	drops                                         *prometheus.Desc
	peers, sessions, mtu, maxPayload              *prometheus.Desc
	peerEstablished, peerLastHandshake            *prometheus.Desc
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
		drops:             d("drops_total", "Datagrams dropped, by reason; none reached the application.", "reason"),
		peers:             d("peers", "Peers, configured and learned."),
		sessions:          d("sessions", "Live sessions."),
		mtu:               d("mtu_bytes", "Path MTU in use."),
		maxPayload:        d("max_payload_bytes", "Largest datagram a write accepts."),
		peerEstablished:   d("peer_established", "1 if the peer has a session now.", "peer", "configured", "policy"),
		peerLastHandshake: d("peer_last_handshake_timestamp_seconds", "Unix time of the peer's last handshake (absent before the first).", "peer"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.datagramsIn, c.bytesIn, c.datagramsOut, c.bytesOut,
		c.handshakes, c.rekeys, c.failures, c.cookies, c.verifs, c.drops,
		c.peers, c.sessions, c.mtu, c.maxPayload,
	} {
		ch <- d
	}
	if c.perPeer {
		ch <- c.peerEstablished
		ch <- c.peerLastHandshake
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
		established := 0.0
		if p.Established {
			established = 1
		}
		gauge(c.peerEstablished, established, addr, fmt.Sprint(p.Configured), p.Policy.String())
		if !p.LastHandshake.IsZero() {
			gauge(c.peerLastHandshake, float64(p.LastHandshake.UnixNano())/1e9, addr)
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
