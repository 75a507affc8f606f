package vaulttest

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// A Relay forwards datagrams between a client and a server through two
// [FaultyConn]s, so that a test can inject faults in both directions of a
// conversation between endpoints it cannot wrap itself: two processes, or
// a real socket and a peer written in another language.
//
// The client sends to the relay's front conn ([Relay.Addr]); the relay
// forwards each datagram through its back conn to the server, with the
// faults of the toServer direction. Datagrams that the back conn receives
// from the server go through the front conn, with the faults of the
// toClient direction, to the client that last sent a datagram. The relay
// serves one client at a time: datagrams from the server that arrive before
// any client has sent are discarded, as are datagrams the back conn
// receives from any address but the server's.
//
// Each direction stops when a read on its conn fails, which Close causes.
type Relay struct {
	toServer *FaultyConn // writes to the server through back
	toClient *FaultyConn // writes to the client through front
	server   net.Addr

	mu     sync.Mutex
	client net.Addr // last client seen; nil before the first

	discarded atomic.Int64
	wg        sync.WaitGroup
}

// NewRelay starts a relay that reads from clients on front and talks to the
// server at server through back, injecting the faults toServer into what it
// forwards to the server and toClient into what it forwards to the client.
// front and back may be any net.PacketConns, such as endpoints of a
// [Network] or UDP sockets; the relay owns them and closes them on Close.
func NewRelay(front, back net.PacketConn, server net.Addr, toServer, toClient Faults) *Relay {
	r := &Relay{
		toServer: NewFaultyConn(back, toServer),
		toClient: NewFaultyConn(front, toClient),
		server:   server,
	}
	r.wg.Add(2)
	go r.forward(r.toClient, func(from net.Addr) (net.Addr, *FaultyConn) {
		r.mu.Lock()
		r.client = from
		r.mu.Unlock()
		return r.server, r.toServer
	})
	go r.forward(r.toServer, func(from net.Addr) (net.Addr, *FaultyConn) {
		if !sameAddr(from, r.server) {
			return nil, nil
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.client, r.toClient
	})
	return r
}

// forward reads datagrams from src and writes each to the destination
// route gives, if any, until a read fails.
func (r *Relay) forward(src *FaultyConn, route func(from net.Addr) (net.Addr, *FaultyConn)) {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := src.ReadFrom(buf)
		if err != nil {
			return
		}
		to, dst := route(from)
		if to == nil {
			r.discarded.Add(1)
			continue
		}
		dst.WriteTo(buf[:n], to) // a failure is counted in dst.Counts
	}
}

// Addr returns the address clients send to: the local address of front.
func (r *Relay) Addr() net.Addr { return r.toClient.LocalAddr() }

// ToServer returns the FaultyConn that writes to the server, for its
// Events and Counts.
func (r *Relay) ToServer() *FaultyConn { return r.toServer }

// ToClient returns the FaultyConn that writes to the client, for its
// Events and Counts.
func (r *Relay) ToClient() *FaultyConn { return r.toClient }

// Discarded returns the number of datagrams the back conn received and the
// relay discarded: those from an address other than the server's, and
// those from the server before any client had sent.
func (r *Relay) Discarded() int { return int(r.discarded.Load()) }

// Close closes both conns, which stops the relay, waits for its goroutines
// to return, and returns the first error from closing the conns.
func (r *Relay) Close() error {
	err1 := r.toClient.Close()
	err2 := r.toServer.Close()
	r.wg.Wait()
	if err1 != nil {
		return err1
	}
	return err2
}

// sameAddr reports whether a and b are the same address; UDP addresses are
// compared with IPv4-mapped IPv6 addresses unmapped.
func sameAddr(a, b net.Addr) bool {
	ua, ok1 := a.(*net.UDPAddr)
	ub, ok2 := b.(*net.UDPAddr)
	if ok1 && ok2 && ua != nil && ub != nil {
		return unmap(ua.AddrPort()) == unmap(ub.AddrPort())
	}
	return a != nil && b != nil && a.Network() == b.Network() && a.String() == b.String()
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
