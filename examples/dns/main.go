// Command dns runs an unchanged github.com/miekg/dns server over vaultudp:
// the server's PacketConn is a *vaultudp.Conn, so every query and answer
// travels sealed. The client builds an A query with dns.Msg.Pack, sends
// it with WriteTo on its own vaultudp Conn, and unpacks the reply.
//
//	go run ./dns
//
// What miekg/dns needs from the PacketConn: ReadFrom and WriteTo, a
// SetReadDeadline before every read (a timeout is a temporary error it
// reads past), and SetReadDeadline in the past to stop the server
// (ShutdownContext), after which it calls Close, twice. A *vaultudp.Conn
// is not a *net.UDPConn, so the server takes its generic PacketConn path.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"github.com/vaultudp/vaultudp"
)

// The zone this example serves: one name, one address (192.0.2.0/24 is
// reserved for documentation).
const (
	zoneName = "example.vaultudp."
	zoneAddr = "192.0.2.53"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, err := run(ctx, "127.0.0.1:0", "127.0.0.1:0", zoneName)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s A %s (asked and answered over vaultudp)\n", zoneName, addr)
}

// run starts a DNS server on serverAddr, asks it for name's A record from
// a client on clientAddr, and returns the address in the answer.
func run(ctx context.Context, serverAddr, clientAddr, name string) (netip.Addr, error) {
	conn, err := vaultudp.Listen("udp", serverAddr, nil)
	if err != nil {
		return netip.Addr{}, err
	}
	// The server is miekg/dns's own, unchanged: only its PacketConn is
	// ours. NotifyStartedFunc tells us when it reads.
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        conn,
		Handler:           dns.HandlerFunc(answer),
		NotifyStartedFunc: func() { close(started) },
	}
	served := make(chan error, 1)
	go func() { served <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-served:
		conn.Close()
		return netip.Addr{}, fmt.Errorf("dns server: %w", err)
	case <-ctx.Done():
		conn.Close()
		return netip.Addr{}, ctx.Err()
	}
	defer func() {
		// ShutdownContext stops the read loop with a read deadline in the
		// past, waits for the handlers and closes the Conn.
		srv.ShutdownContext(ctx)
		<-served
	}()

	client, err := vaultudp.Listen("udp", clientAddr, nil)
	if err != nil {
		return netip.Addr{}, err
	}
	defer client.Close()
	return query(ctx, client, conn.LocalAddr(), name)
}

// answer is an ordinary miekg/dns handler.
func answer(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		if q.Qtype == dns.TypeA && dns.CanonicalName(q.Name) == zoneName {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.ParseIP(zoneAddr),
			})
		}
	}
	if len(m.Answer) == 0 {
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// query asks server for name's A record over conn, with the plain
// PacketConn calls: Pack, WriteTo, ReadFrom, Unpack.
func query(ctx context.Context, conn *vaultudp.Conn, server net.Addr, name string) (netip.Addr, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		return netip.Addr{}, err
	}
	if _, err := conn.WriteTo(wire, server); err != nil {
		return netip.Addr{}, err
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(d)
	}
	buf := make([]byte, conn.MaxPayload())
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return netip.Addr{}, err
		}
		var r dns.Msg
		if from.String() != server.String() || r.Unpack(buf[:n]) != nil || r.Id != q.Id {
			continue // not our answer
		}
		if r.Rcode != dns.RcodeSuccess {
			return netip.Addr{}, fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				addr, _ := netip.AddrFromSlice(a.A)
				return addr.Unmap(), nil
			}
		}
		return netip.Addr{}, errors.New(name + ": no A record in the answer")
	}
}
