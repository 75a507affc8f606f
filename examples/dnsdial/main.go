// Command dnsdial runs an unchanged github.com/miekg/dns client over
// vaultudp.Dial: the client's connection is dns.Conn{Conn: c}, with c the
// net.Conn vaultudp.Dial returns, and dns.Client.ExchangeWithConnContext
// sends the queries over it to a miekg/dns server whose PacketConn is a
// *vaultudp.Conn. The same code runs over plain UDP (net.ListenPacket and
// net.Dialer.DialContext), and the answers are the same.
//
//	go run ./dnsdial
//
// What miekg/dns needs from the client's net.Conn: Read and Write of
// whole datagrams, SetReadDeadline and SetWriteDeadline before each
// exchange, and that it is a net.PacketConn too (as a connected
// *net.UDPConn is): without that, dns.Conn would frame messages with the
// two-byte length prefix of DNS over TCP. vaultudp.Dial's net.Conn is one.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vaultudp/vaultudp"
)

// The zone this example serves (192.0.2.0/24 and 2001:db8::/32 are
// reserved for documentation).
const zone = "example.vaultudp."

var records = map[string][]string{
	"www." + zone:  {"www." + zone + " 60 IN A 192.0.2.1", "www." + zone + " 60 IN AAAA 2001:db8::1"},
	"mail." + zone: {"mail." + zone + " 60 IN A 192.0.2.25"},
	"txt." + zone:  {"txt." + zone + ` 60 IN TXT "sealed by vaultudp" "` + strings.Repeat("x", 200) + `"`},
}

// Questions are the queries the client asks, in order.
var Questions = []dns.Question{
	{Name: "www." + zone, Qtype: dns.TypeA, Qclass: dns.ClassINET},
	{Name: "www." + zone, Qtype: dns.TypeAAAA, Qclass: dns.ClassINET},
	{Name: "mail." + zone, Qtype: dns.TypeA, Qclass: dns.ClassINET},
	{Name: "txt." + zone, Qtype: dns.TypeTXT, Qclass: dns.ClassINET},
	{Name: "nowhere." + zone, Qtype: dns.TypeA, Qclass: dns.ClassINET},
}

// Transport is how the example makes its sockets: plain UDP or vaultudp.
type Transport struct {
	Name   string
	Listen func(address string) (net.PacketConn, error)
	Dial   func(ctx context.Context, address string) (net.Conn, error)
}

// UDP is plain, unencrypted UDP.
var UDP = Transport{
	Name:   "udp",
	Listen: func(address string) (net.PacketConn, error) { return net.ListenPacket("udp", address) },
	Dial: func(ctx context.Context, address string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", address)
	},
}

// Vault is vaultudp with every default.
var Vault = Transport{
	Name: "vaultudp",
	Listen: func(address string) (net.PacketConn, error) {
		return vaultudp.Listen("udp", address, nil)
	},
	Dial: func(ctx context.Context, address string) (net.Conn, error) {
		return vaultudp.DialContext(ctx, "udp", address, nil)
	},
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tr := range []Transport{UDP, Vault} {
		answers, err := Run(ctx, tr, "127.0.0.1:0", Questions)
		if err != nil {
			log.Fatalf("%s: %v", tr.Name, err)
		}
		fmt.Printf("over %s:\n", tr.Name)
		for _, a := range answers {
			fmt.Println("  " + a)
		}
	}
}

// Run starts a DNS server on serverAddr over tr, dials it with tr.Dial,
// asks each question over that one connection and returns the answers,
// one line per question: the records, or the response code when there
// are none.
func Run(ctx context.Context, tr Transport, serverAddr string, questions []dns.Question) ([]string, error) {
	pc, err := tr.Listen(serverAddr)
	if err != nil {
		return nil, err
	}
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        pc,
		Handler:           dns.HandlerFunc(answer),
		NotifyStartedFunc: func() { close(started) },
	}
	served := make(chan error, 1)
	go func() { served <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-served:
		pc.Close()
		return nil, fmt.Errorf("dns server: %w", err)
	case <-ctx.Done():
		pc.Close()
		return nil, ctx.Err()
	}
	defer func() {
		srv.ShutdownContext(ctx) // stops the read loop and closes pc
		<-served
	}()

	c, err := tr.Dial(ctx, pc.LocalAddr().String())
	if err != nil {
		return nil, err
	}
	// An unchanged miekg/dns client connection: only its net.Conn is ours.
	co := &dns.Conn{Conn: c}
	defer co.Close()
	client := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	var out []string
	for _, q := range questions {
		m := new(dns.Msg)
		m.SetQuestion(q.Name, q.Qtype)
		r, _, err := client.ExchangeWithConnContext(ctx, m, co)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", q.Name, dns.TypeToString[q.Qtype], err)
		}
		out = append(out, format(r))
	}
	return out, nil
}

// format is an answer as one line: its records, else its rcode.
func format(r *dns.Msg) string {
	if len(r.Answer) == 0 {
		return r.Question[0].Name + " " + dns.RcodeToString[r.Rcode]
	}
	var rrs []string
	for _, rr := range r.Answer {
		rrs = append(rrs, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return strings.Join(rrs, " | ")
}

// answer is an ordinary miekg/dns handler serving records.
func answer(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		for _, text := range records[dns.CanonicalName(q.Name)] {
			rr, err := dns.NewRR(text)
			if err == nil && rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		if _, ok := records[dns.CanonicalName(q.Name)]; !ok {
			m.Rcode = dns.RcodeNameError
		}
	}
	w.WriteMsg(m)
}
