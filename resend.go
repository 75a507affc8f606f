package vaultudp

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Sending again what a peer's restart lost (issue 25, item 4).
//
// A peer that restarts loses its sessions. What this Conn seals to it
// from then on reaches the new instance under a session it no longer has:
// the new instance answers with a reset (reset.go), this Conn handshakes
// at once, and the datagrams sealed in between are gone, where plain UDP
// would have delivered them (a QUIC client's Initial after its server's
// restart: quic-go then waits for its 200 ms probe timeout). So a Conn
// keeps the last datagrams it sealed to each peer, and when a reset for
// the peer's current session arrives, those sealed within a round trip
// before it go again, once, under the new session, before anything
// written since.
//
// The rule, decided in one place (resendDue):
//
//   - only after a reset that authenticates for the peer's current
//     session (its token, from the peer's validated address: receiveReset);
//   - only under a new session whose peer key is the lost session's: a new
//     identity at the address gets nothing of the old one's;
//   - only datagrams sealed (under the lost sessions) within the round
//     trip the new handshake measured, from the reset to the new session,
//     kept within [resendFloor, resendCeiling], before the reset was
//     handled; none if the new session came more than resendCeiling after
//     it;
//   - once: a datagram sent again is not kept to go a third time.
//
// The store holds copies of the last datagrams sealed to the peer, in
// clear, until they are overwritten, taken by a reset, or the store is
// taken back for another peer (with the sessions they were sealed under,
// for the reset to tell which were lost).
//
// A datagram sent again may already have reached the peer's previous
// instance just before it stopped, or have been sent while no instance
// listened: the new one then receives it, as a network may duplicate a
// datagram or deliver it late (by at most twice resendCeiling).
//
// Bounds. Per peer: the last resendSlots datagrams of at most
// resendMaxDatagram bytes sealed to it (larger ones are not kept), in one
// store of resendStoreBytes. Per Conn: at most resendConnStores stores,
// lent to the peers as they are first written to; when none is left, a
// store whose datagrams are all older than resendCeiling (its peer is
// idle, or gone) is taken back for the peer that asks, and a peer refused
// one asks again only after resendRetry. Datagrams a reset took wait in
// the peer's handshake queue, under its bounds (send.go).
//
// What it costs the data path, per sealed datagram of at most
// resendMaxDatagram bytes: a read of the Conn's clock, one copy into the
// peer's store under the lock of one of its slots, which a writer only
// tries (a writer that finds its slot busy, with more than resendSlots
// writers of one peer at once, keeps nothing rather than wait), and a few
// atomic operations. Nothing is allocated but the store, once per peer.
// BenchmarkResendKeep measures it. (The coarse clock, a load, would be
// cheaper, but lags by a tick or more under load, which a window of a
// round trip cannot absorb.)
const (
	resendSlots       = 4
	resendMaxDatagram = 1472 // the largest UDP payload an Ethernet path carries unfragmented: QUIC's Initials fit
	resendConnStores  = 160
	resendStoreBytes  = int(unsafe.Sizeof(resendStore{}))
	// resendFloor covers what delays a reset and not the handshake that
	// measures the round trip: this Conn's reader away from the socket
	// (directGrace) while no application goroutine reads, scheduling.
	resendFloor   = 50 * time.Millisecond
	resendCeiling = 500 * time.Millisecond
	resendRetry   = time.Second
)

// resendDue is the rule: whether a datagram sealed at sealed, under a
// session that a reset handled at resetAt showed the peer had lost, goes
// again under the session that came at now, with a peer of key newKey
// (the lost session's peer key: oldKey). Times are the Conn's clock
// (c.clk), in nanoseconds.
//
// The datagrams the peer's new instance refused are those that reached it
// in the round trip before its first reset came back; the new
// handshake's round trip (now-resetAt) measures it, within [resendFloor,
// resendCeiling]. A datagram sealed earlier reached the previous instance,
// or nothing (the peer was down): plain UDP would not deliver it either.
func resendDue(sealed, resetAt, now int64, oldKey, newKey ed25519.PublicKey) bool {
	if len(oldKey) == 0 || !bytes.Equal(oldKey, newKey) {
		return false // never across an identity change
	}
	rtt := time.Duration(now - resetAt) // the new handshake's round trip
	if rtt < 0 || rtt > resendCeiling {
		return false // too late: what waited is older than any round trip allowed
	}
	return time.Duration(resetAt-sealed) <= min(max(rtt, resendFloor), resendCeiling)
}

// resendKeepFrom is the oldest a datagram may have been sealed, for a
// reset handled at resetAt, to be due under any new session: what a reset
// takes from the store (resendDue decides, at the new session).
func resendKeepFrom(resetAt int64) int64 { return resetAt - int64(resendCeiling) }

// resendSlot is one datagram of a peer's store. mu guards the fields.
type resendSlot struct {
	mu    sync.Mutex
	owner *resendRing // the ring the store is lent to
	s     *session    // the session it was sealed under; nil: empty
	at    int64       // c.clk when sealed
	seq   uint64      // the order it was sealed in
	n     int
	data  [resendMaxDatagram]byte
}

// resendStore is the memory of one peer's last datagrams, lent by the
// Conn's resendPool.
type resendStore struct {
	slots [resendSlots]resendSlot
}

// resendRing is a peer's part (peer.resend): its store, and the
// datagrams a reset took until the next session.
type resendRing struct {
	store atomic.Pointer[resendStore] // nil until lent
	next  atomic.Uint64               // the next slot, modulo resendSlots
	last  atomic.Int64                // c.now() (the coarse clock) at the last datagram kept
	// refused is c.clk at which a peer refused a store may ask again.
	refused atomic.Int64
	// pending holds the datagrams given to the queue to go again: when
	// they are sealed, they are not kept (once).
	pending  [resendSlots]atomic.Pointer[byte]
	npending atomic.Int32

	// Under the peer's mu: the datagrams a reset took, at the front of
	// the peer's queue (taken of them, sealed at takenAt), the reset's
	// time and the lost session's peer key.
	taken   int
	takenAt [resendSlots]int64
	resetAt int64
	oldKey  ed25519.PublicKey
}

// resendPool lends stores to peers, at most resendConnStores of them;
// its lock is a leaf but for the slot locks it takes one at a time, or
// only tries (giveBack).
type resendPool struct {
	mu   sync.Mutex
	lent []*resendRing
}

// keepSent keeps b, just sealed under s, in the store of s's peer: the
// data path's part (appendSealed).
func (c *Conn) keepSent(s *session, b []byte) {
	p := s.peer
	if p == nil || len(b) > resendMaxDatagram {
		return
	}
	r := &p.resend
	if r.npending.Load() != 0 && r.unpend(b) {
		return // going again: once
	}
	if cn := c.now(); r.last.Load() != cn { // the coarse clock: most datagrams change nothing
		r.last.Store(cn)
	}
	now := int64(c.clk.since())
	st := r.store.Load()
	if st == nil {
		if st = c.resets.pool.lend(r, now, c.now()); st == nil {
			return
		}
	}
	seq := r.next.Add(1)
	sl := &st.slots[seq%resendSlots]
	if !sl.mu.TryLock() {
		return // another writer of this peer has the slot: it keeps something as recent
	}
	if sl.owner == r { // else the store was taken back meanwhile
		sl.s, sl.at, sl.seq, sl.n = s, now, seq, copy(sl.data[:], b)
	}
	sl.mu.Unlock()
}

// unpend reports whether b is a datagram given to the queue to go again,
// and forgets it if so.
func (r *resendRing) unpend(b []byte) bool {
	ptr := unsafe.SliceData(b)
	for i := range r.pending {
		if r.pending[i].Load() == ptr && r.pending[i].CompareAndSwap(ptr, nil) {
			r.npending.Add(-1)
			return true
		}
	}
	return false
}

// lend gives r a store, or nil if none is left for now (then r asks
// again only after resendRetry); now is c.clk, coarse c.now().
func (pl *resendPool) lend(r *resendRing, now, coarse int64) *resendStore {
	if now < r.refused.Load() {
		return nil
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if st := r.store.Load(); st != nil {
		return st // another writer of the peer got it
	}
	var st *resendStore
	if len(pl.lent) < resendConnStores {
		st = new(resendStore)
	} else {
		for i, v := range pl.lent {
			if st = v.giveBack(coarse); st != nil {
				pl.lent = slices.Delete(pl.lent, i, i+1)
				break
			}
		}
		if st == nil {
			r.refused.Store(now + int64(resendRetry))
			return nil
		}
	}
	for i := range st.slots {
		sl := &st.slots[i]
		sl.mu.Lock()
		sl.owner = r
		sl.mu.Unlock()
	}
	r.store.Store(st)
	pl.lent = append(pl.lent, r)
	return st
}

// giveBack takes r's store from it if everything in it is older than
// resendCeiling at coarse (c.now()), and returns it emptied; nil if not.
// It only tries the slots' locks: a writer holding one is using the
// store.
func (r *resendRing) giveBack(coarse int64) *resendStore {
	st := r.store.Load()
	if st == nil {
		return nil
	}
	// The coarse clock lags by up to a tick: a tick more.
	stale := func() bool {
		return r.last.Load() <= coarse-int64(resendCeiling+housekeepingEvery)
	}
	if !stale() {
		return nil
	}
	n := 0
	for ; n < len(st.slots); n++ {
		if !st.slots[n].mu.TryLock() {
			break
		}
	}
	ok := n == len(st.slots) && stale() // kept meanwhile (a writer marks last first)
	for i := range n {
		sl := &st.slots[i]
		if ok {
			sl.owner, sl.s, sl.n = nil, nil, 0
		}
		sl.mu.Unlock()
	}
	if !ok {
		return nil
	}
	r.store.Store(nil)
	return st
}

// takeForResendLocked is a reset's part: the reset for cur, p's current
// session, arrived, and cur and the sessions in dead (cur among them) are
// gone. The datagrams sealed under them that could still be due
// (resendKeepFrom) leave the store for the front of p's queue, where the
// next session decides on them (resendLocked). p.mu is held.
func (c *Conn) takeForResendLocked(p *peer, cur *session, dead []*session) {
	r := &p.resend
	c.dropTakenLocked(p) // a reset with no session since the last: cannot happen, but bounded anyway
	st := r.store.Load()
	if st == nil {
		return
	}
	now := int64(c.clk.since())
	from := resendKeepFrom(now)
	type kept struct {
		seq uint64
		at  int64
		b   []byte
	}
	var ks []kept
	for i := range st.slots {
		sl := &st.slots[i]
		sl.mu.Lock()
		if sl.owner == r && sl.s != nil && slices.Contains(dead, sl.s) && sl.at >= from {
			// Room for one byte more: the queue's copy has a pointer of
			// its own even when empty, which unpend tells by.
			b := make([]byte, sl.n, sl.n+1)
			copy(b, sl.data[:sl.n])
			ks = append(ks, kept{sl.seq, sl.at, b})
		}
		if sl.owner == r && slices.Contains(dead, sl.s) {
			sl.s, sl.n = nil, 0 // taken, or too old: gone with its session
		}
		sl.mu.Unlock()
	}
	if len(ks) == 0 {
		return
	}
	slices.SortFunc(ks, func(a, b kept) int { return cmp.Compare(a.seq, b.seq) })
	bs := make([][]byte, len(ks))
	for i, k := range ks {
		bs[i] = k.b
	}
	n := c.requeueLocked(p, bs) // send.go: the queue's bounds
	for i := range n {
		r.takenAt[i] = ks[i].at
	}
	r.taken, r.resetAt, r.oldKey = n, now, cur.identity
}

// resendLocked is a new session's part: a session with a peer of key
// identity is about to become p's current one. Of the datagrams a reset
// took, those due (resendDue) stay at the front of p's queue, which the
// caller flushes first, and are counted; the others leave it. p.mu is
// held.
func (c *Conn) resendLocked(p *peer, identity ed25519.PublicKey) {
	r := &p.resend
	taken := p.takenLocked()
	if taken == 0 {
		r.taken, r.oldKey = 0, nil
		return
	}
	now := int64(c.clk.since())
	for i := range r.pending { // what went again before, if not sealed (coalesced: not kept anyway)
		if r.pending[i].Swap(nil) != nil {
			r.npending.Add(-1)
		}
	}
	q := make([][]byte, 0, len(p.queue))
	due := 0
	for i, b := range p.queue[:taken] {
		if !resendDue(r.takenAt[i], r.resetAt, now, r.oldKey, identity) {
			c.unqueueLocked(p, b) // send.go
			continue
		}
		r.pending[due].Store(unsafe.SliceData(b))
		r.npending.Add(1)
		due++
		q = append(q, b)
	}
	p.queue = append(q, p.queue[taken:]...)
	r.taken, r.oldKey = 0, nil
	c.stats.resent.Add(uint64(due))
}

// takenLocked is how many datagrams at the front of p's queue a reset
// took (resend.go); p.mu is held. (A peer closed meanwhile has no queue.)
func (p *peer) takenLocked() int { return min(p.resend.taken, len(p.queue)) }

// dropTakenLocked takes the datagrams a reset took out of p's queue, if
// any are still there. p.mu is held.
func (c *Conn) dropTakenLocked(p *peer) {
	r := &p.resend
	taken := p.takenLocked()
	for _, b := range p.queue[:taken] {
		c.unqueueLocked(p, b)
	}
	p.queue = slices.Delete(p.queue, 0, taken)
	r.taken, r.oldKey = 0, nil
}
