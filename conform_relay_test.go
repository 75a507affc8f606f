package vaultudp

import (
	"net"
	"net/netip"
	"sync"
	"testing"
)

// udpRelay is a plain UDP relay between one client and one server, the
// kind of middlebox a consumer's datagrams cross: the client talks to the
// relay's address, which forwards to the server from there, and the
// server's answers go back to the client. It reads into buffers of bufSize
// bytes, as a relay sized for QUIC does (quic-go's own test proxy reads
// 1452), so that a longer datagram is cut to bufSize (as recvfrom cuts a
// datagram longer than its buffer), and it may hold what
// the client sends until released.
type udpRelay struct {
	pc             *net.UDPConn
	client, server netip.AddrPort
	bufSize        int
	done           chan struct{}

	mu       sync.Mutex
	holding  bool
	held     [][]byte
	gotHeld  chan struct{} // closed when the first datagram is held
	cut      int           // datagrams from either side that filled the buffer
	longest  int           // the longest datagram read
	forwards int
}

func newUDPRelay(t testing.TB, client, server netip.AddrPort, bufSize int, hold bool) *udpRelay {
	t.Helper()
	r := &udpRelay{pc: rawUDP(t), client: client, server: server, bufSize: bufSize, holding: hold, done: make(chan struct{}), gotHeld: make(chan struct{})}
	go r.run()
	t.Cleanup(func() {
		r.pc.Close()
		<-r.done
	})
	return r
}

func (r *udpRelay) addr() netip.AddrPort {
	return normAddr(r.pc.LocalAddr().(*net.UDPAddr).AddrPort())
}

func (r *udpRelay) run() {
	defer close(r.done)
	// One byte more than the relay's buffer, to tell a datagram that
	// filled it from one it cut; what is forwarded is what a bufSize
	// buffer holds.
	buf := make([]byte, r.bufSize+1)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		p := append([]byte(nil), buf[:min(n, r.bufSize)]...)
		var to netip.AddrPort
		switch normAddr(from) {
		case r.client:
			to = r.server
		case r.server:
			to = r.client
		default:
			continue
		}
		r.mu.Lock()
		r.longest = max(r.longest, n)
		if n > r.bufSize {
			r.cut++
		}
		if r.holding && to == r.server {
			if r.held = append(r.held, p); len(r.held) == 1 {
				close(r.gotHeld)
			}
			r.mu.Unlock()
			continue
		}
		r.forwards++
		r.mu.Unlock()
		r.pc.WriteToUDPAddrPort(p, to)
	}
}

// heldDatagrams returns copies of what the relay holds.
func (r *udpRelay) heldDatagrams() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, p := range r.held {
		out = append(out, append([]byte(nil), p...))
	}
	return out
}

// release forwards what the relay held and stops holding.
func (r *udpRelay) release() {
	r.mu.Lock()
	held := r.held
	r.held, r.holding = nil, false
	r.forwards += len(held)
	r.mu.Unlock()
	for _, p := range held {
		r.pc.WriteToUDPAddrPort(p, r.server)
	}
}

func (r *udpRelay) counts() (cut, longest, forwards int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cut, r.longest, r.forwards
}
