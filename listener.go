package vaultudp

import (
	"errors"
	"net"
	"sync"
)

// Listener hands out one net.Conn per peer, for servers written one
// connection at a time, as dtls.Listen's listener does: Accept returns a
// PeerConn (ConnTo) for each peer that sends a datagram while no net.Conn
// of its own reads it, with that first datagram waiting to be read. A
// peer whose net.Conn is closed is accepted again when it next sends.
//
// The Listener reads the Conn: do not also read the Conn itself. Writes,
// Stats, Peers and the rest of the Conn work as ever.
type Listener struct {
	c   *Conn
	buf []byte
	mu  sync.Mutex // one Accept reads at a time
}

// ListenConns is Listen, with a Listener over the Conn.
func ListenConns(network, address string, config *Config) (*Listener, error) {
	c, err := Listen(network, address, config)
	if err != nil {
		return nil, err
	}
	return NewListener(c), nil
}

// NewListener returns a Listener over c.
func NewListener(c *Conn) *Listener {
	return &Listener{c: c, buf: make([]byte, maxPayloadFor(udpMaxDatagram))}
}

// Conn returns the Conn the Listener reads.
func (l *Listener) Conn() *Conn { return l.c }

// Addr returns the Conn's local address.
func (l *Listener) Addr() net.Addr { return l.c.LocalAddr() }

// Close closes the Conn: Accept and every accepted net.Conn then fail
// with errors wrapping net.ErrClosed.
func (l *Listener) Close() error { return l.c.Close() }

// Accept waits for a datagram from a peer that no accepted net.Conn
// reads, and returns a net.Conn (a PeerConn) for that peer with the
// datagram waiting in it. It fails when the Conn is closed, or with the
// Conn's read error; the Conn's read deadline applies to it.
func (l *Listener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		n, from, err := l.c.ReadFromUDPAddrPort(l.buf)
		if err != nil {
			return nil, err
		}
		pkt := l.c.getPacket()
		if n > len(pkt.buf) {
			pkt.buf = make([]byte, n)
		}
		pkt.data, pkt.from = pkt.buf[:copy(pkt.buf, l.buf[:n])], from
		pc, err := l.c.ConnTo(from)
		if err != nil {
			// A net.Conn reads the peer already (the datagram was
			// queued for the Conn just before it took over): it is
			// that net.Conn's. Or it is not a peer that a net.Conn
			// can serve (the Conn's own address, a ProtocolV2 peer):
			// dropped, as a listener has no one to give it to.
			if p, _ := l.c.peerFor(from, lookupOnly); p != nil {
				if q := p.connTo.Load(); q != nil && l.deliver(p, q, pkt) {
					// Its Read may be the goroutine in the socket,
					// waiting for its own queue (reader.go).
					l.c.kickDirectReader()
					continue
				}
			}
			l.c.putPacket(pkt)
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			continue
		}
		if pcc := pc.(*peerConn); !l.deliver(pcc.p, pcc.q, pkt) {
			l.c.putPacket(pkt)
		}
		return pc, nil
	}
}

// deliver queues pkt for the net.Conn reading q; false if the queues of
// the Conn's net.Conns are full.
func (l *Listener) deliver(p *peer, q *peerQueue, pkt *packet) bool {
	if !l.c.toPeerQueue(p, q, pkt) {
		l.c.stats.queueFull.Add(1)
		return false
	}
	return true
}
