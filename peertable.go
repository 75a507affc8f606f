package vaultudp

import (
	"net/netip"
	"slices"
	"sync"
)

// peerTable is a Conn's peers by address, and the counts its limits need.
// Its methods alone change it, and keep these invariants:
//
//   - learned is the number of peers in byAddr that are not configured,
//     and an admission that would take it past max (Config.MaxPeers)
//     fails;
//   - plain is the number of learned peers in byAddr known only from
//     plaintext (originPlaintext); plainOrder holds each of them, oldest
//     first, and some that are gone, at most 2×maxPlaintextPeers;
//   - strangers holds peers that are in no table entry: for an address
//     that is no peer, the replies sent to its hellos wait there for a
//     final message (handshake_responder.go). A hello makes no peer; a
//     final message that completes a handshake does (adoptStranger).
//     Strangers count against max with the learned peers.
//
// A peer's address, configured flag and origin, which the counts depend
// on, change only with mu held (and the peer's own mu, so that either
// lock reads them).
type peerTable struct {
	mu sync.RWMutex // the peer table's lock (see the list in conn.go)

	max          int // Config.MaxPeers
	byAddr       map[netip.AddrPort]*peer
	strangers    map[netip.AddrPort]*peer
	learned      int
	plain        int
	plainOrder   []*peer
	plainEvicted addrSet // plaintext peers evicted, remembered (peer.go)
}

func newPeerTable(max int) peerTable {
	return peerTable{
		max:       max,
		byAddr:    make(map[netip.AddrPort]*peer),
		strangers: make(map[netip.AddrPort]*peer),
	}
}

// lookup returns the peer at a, or nil.
func (t *peerTable) lookup(a netip.AddrPort) *peer {
	t.mu.RLock()
	p := t.byAddr[a]
	t.mu.RUnlock()
	return p
}

// snapshot returns the peers, in no order.
func (t *peerTable) snapshot() []*peer {
	t.mu.RLock()
	defer t.mu.RUnlock()
	ps := make([]*peer, 0, len(t.byAddr))
	for _, p := range t.byAddr {
		ps = append(ps, p)
	}
	return ps
}

// count returns the number of peers.
func (t *peerTable) count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byAddr)
}

// Every method below is called with mu held: for writing where it changes
// the table.

// getLocked returns the peer at a, or nil.
func (t *peerTable) getLocked(a netip.AddrPort) *peer { return t.byAddr[a] }

// learnedFullLocked reports whether no learned peer may be added.
func (t *peerTable) learnedFullLocked() bool { return t.learned >= t.max }

// strangersFullLocked reports whether no stranger may be added: strangers
// and learned peers share max.
func (t *peerTable) strangersFullLocked() bool {
	return t.learned+len(t.strangers) >= t.max
}

// insertLocked puts p in the table at its address, which is free, and
// counts it.
func (t *peerTable) insertLocked(p *peer) {
	t.byAddr[p.addr] = p
	if p.configured {
		return
	}
	t.learned++
	if p.origin == originPlaintext {
		t.plain++
		if len(t.plainOrder) >= 2*maxPlaintextPeers {
			t.plainOrder = slices.DeleteFunc(t.plainOrder, func(q *peer) bool { return t.byAddr[q.addrLoad()] != q })
		}
		t.plainOrder = append(t.plainOrder, p)
	}
}

// removeLocked takes p out of the table, and its counts; p.mu is held
// and p is not yet marked removed (it is counted once).
func (t *peerTable) removeLocked(p *peer) {
	if t.byAddr[p.addr] == p {
		delete(t.byAddr, p.addr)
	}
	t.uncountLocked(p)
}

// uncountLocked takes a learned peer out of the counts.
func (t *peerTable) uncountLocked(p *peer) {
	if p.configured {
		return
	}
	t.learned--
	if p.origin == originPlaintext {
		t.plain--
	}
}

// configureLocked makes the learned peer p a configured one, with the
// settings of np (a peer newPeer made for the PeerConfig); p.mu is held.
func (t *peerTable) configureLocked(p, np *peer) {
	t.uncountLocked(p)
	p.configured, p.origin, p.pinned, p.keepalive, p.psk = true, originConfig, np.pinned, np.keepalive, np.psk
	p.policyV.Store(np.policyV.Load())
}

// moveLocked moves p, which holds its entry, to the free address to;
// p.mu is held.
func (t *peerTable) moveLocked(p *peer, to netip.AddrPort) {
	delete(t.byAddr, p.addr)
	p.addr = to
	p.at.Store(&to)
	t.byAddr[to] = p
}

// strangerLocked returns the stranger at a, or nil.
func (t *peerTable) strangerLocked(a netip.AddrPort) *peer { return t.strangers[a] }

// addStrangerLocked keeps p, a peer made for a hello from an address that
// is no peer, outside the table.
func (t *peerTable) addStrangerLocked(p *peer) {
	p.stranger = true
	t.strangers[p.addr] = p
}

// takeStrangerLocked removes the stranger at a and returns it, or nil;
// p.mu is not held (the caller clears p.stranger under it).
func (t *peerTable) takeStrangerLocked(a netip.AddrPort) *peer {
	p := t.strangers[a]
	if p != nil {
		delete(t.strangers, a)
	}
	return p
}

// plainCandidateLocked returns the oldest learned peer still known only
// from plaintext, for eviction, or nil; it forgets the entries it passes.
func (t *peerTable) plainCandidateLocked() *peer {
	for len(t.plainOrder) > 0 {
		q := t.plainOrder[0]
		t.plainOrder = t.plainOrder[1:]
		q.mu.Lock()
		plain := !q.removed && q.origin == originPlaintext && !q.established && !q.seenSealed.Load()
		addr := q.addr
		q.mu.Unlock()
		if plain && t.byAddr[addr] == q {
			return q
		}
	}
	return nil
}
