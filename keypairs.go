package vaultudp

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// sessionIndex finds a Conn's sessions and pending initiations by the
// local index that the peer puts in every sealed datagram and reply. Its
// lock is the innermost of all (see Conn). live holds the same sessions
// for the receive path, which reads it without a lock (sync.Map:
// read-mostly, each key written once).
type sessionIndex struct {
	mu         sync.Mutex
	sessions   map[uint32]*session // a nil value is reserved: a reply is made, or waits for its final message, under it
	initiated  map[uint32]*peer    // pending initiations
	responding map[uint32]*peer    // replies waiting for their final message (reserved in sessions)
	live       sync.Map            // uint32 -> *session
}

func newSessionIndex() *sessionIndex {
	return &sessionIndex{sessions: make(map[uint32]*session), initiated: make(map[uint32]*peer), responding: make(map[uint32]*peer)}
}

// respond records that the reply with index idx (reserved) was sent to p.
func (x *sessionIndex) respond(idx uint32, p *peer) {
	x.mu.Lock()
	x.responding[idx] = p
	x.mu.Unlock()
}

// responder returns the peer whose reply has index idx, or nil.
func (x *sessionIndex) responder(idx uint32) *peer {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.responding[idx]
}

// doneResponding forgets that idx waits for a final message; the index
// stays reserved for the session about to be added under it.
func (x *sessionIndex) doneResponding(idx uint32) {
	x.mu.Lock()
	delete(x.responding, idx)
	x.mu.Unlock()
}

// dropResponse forgets a reply that will not complete and releases its
// index.
func (x *sessionIndex) dropResponse(idx uint32) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.responding, idx)
	if s, ok := x.sessions[idx]; ok && s == nil {
		delete(x.sessions, idx)
	}
}

// lookup returns the session with local index idx, or nil. It takes no
// lock: the receive path calls it for every sealed datagram.
func (x *sessionIndex) lookup(idx uint32) *session {
	s, _ := x.live.Load(idx)
	ss, _ := s.(*session)
	return ss
}

// add makes s findable by its local index.
func (x *sessionIndex) add(s *session) {
	x.mu.Lock()
	x.sessions[s.localIndex] = s
	x.live.Store(s.localIndex, s)
	x.mu.Unlock()
}

// remove forgets the sessions ss (nil entries are skipped).
func (x *sessionIndex) remove(ss ...*session) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, s := range ss {
		if s != nil && x.sessions[s.localIndex] == s {
			delete(x.sessions, s.localIndex)
			x.live.CompareAndDelete(s.localIndex, s)
		}
	}
}

// reserve picks an index for a responder session being made.
func (x *sessionIndex) reserve() uint32 {
	x.mu.Lock()
	defer x.mu.Unlock()
	idx := x.newIndexLocked()
	x.sessions[idx] = nil
	return idx
}

// release gives back an index reserve returned, or a session's.
func (x *sessionIndex) release(idx uint32) {
	x.mu.Lock()
	delete(x.sessions, idx)
	x.mu.Unlock()
}

// initiate picks an index for a hello to p.
func (x *sessionIndex) initiate(p *peer) uint32 {
	x.mu.Lock()
	defer x.mu.Unlock()
	idx := x.newIndexLocked()
	x.initiated[idx] = p
	return idx
}

// initiator returns the peer the hello with index idx went to, or nil.
func (x *sessionIndex) initiator(idx uint32) *peer {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.initiated[idx]
}

// forget drops the initiations of p among inits (nil entries are
// skipped).
func (x *sessionIndex) forget(p *peer, inits ...*initiation) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, i := range inits {
		if i != nil && x.initiated[i.localIndex] == p {
			delete(x.initiated, i.localIndex)
		}
	}
}

// forgetIndex drops the initiation with index idx.
func (x *sessionIndex) forgetIndex(idx uint32) {
	x.mu.Lock()
	delete(x.initiated, idx)
	x.mu.Unlock()
}

// counts returns how many sessions and initiations are indexed.
func (x *sessionIndex) counts() (sessions, initiated int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.sessions), len(x.initiated)
}

// newIndexLocked picks a random unused non-zero index; x.mu is held.
func (x *sessionIndex) newIndexLocked() uint32 {
	var b [4]byte
	for {
		rand.Read(b[:])
		i := binary.BigEndian.Uint32(b[:])
		if i == 0 {
			continue
		}
		if _, ok := x.sessions[i]; ok {
			continue
		}
		if _, ok := x.initiated[i]; ok {
			continue
		}
		return i
	}
}

// keypairs holds one peer's sessions, as wireguard-go's Keypairs does:
//
//	current   the session it sends under
//	previous  the one before, kept until it expires for datagrams in flight
//
// A session is made only when its handshake is complete (the reply read,
// or the final message read), so there is no unconfirmed slot: a
// responder's replies waiting for their final message are the peer's
// (respNew, respOld), not sessions. Its lock guards the slots; current is
// also atomic, so that the send path reads it with no lock at all. The
// receive path finds a session by index (sessionIndex). Methods that take
// sessions out of the slots return them, for the caller to remove from the
// index.
type keypairs struct {
	cur atomic.Pointer[session] // current; written under mu

	mu   sync.Mutex
	prev *session
}

// current returns the session to send under, or nil; it takes no lock.
func (kp *keypairs) current() *session { return kp.cur.Load() }

// previous returns the session before the current one, or nil.
func (kp *keypairs) previous() *session {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	return kp.prev
}

// abandon takes out s, a current session whose handshake the responder
// never confirmed, and makes the one before it current again, if any:
// the peer still has it.
func (kp *keypairs) abandon(s *session) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.cur.Load() != s {
		return
	}
	kp.cur.Store(kp.prev)
	kp.prev = nil
}

// empty reports whether the peer has no session at all.
func (kp *keypairs) empty() bool {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	return kp.cur.Load() == nil && kp.prev == nil
}

// promote makes s current. The current session becomes the previous one,
// unless replace (a new identity took the peer's place): then both go.
func (kp *keypairs) promote(s *session, replace bool) (dropped []*session) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	keep := kp.cur.Load()
	dropped = []*session{kp.prev}
	if replace {
		dropped = append(dropped, keep)
		keep = nil
	}
	kp.prev = keep
	kp.cur.Store(s)
	return dropped
}

// discard takes s out of whichever slot holds it and reports whether it
// was the current one.
func (kp *keypairs) discard(s *session) (wasCurrent bool) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	switch s {
	case nil:
	case kp.cur.Load():
		kp.cur.Store(nil)
		return true
	case kp.prev:
		kp.prev = nil
	}
	return false
}

// dropSending takes out the current and previous sessions: the peer is
// gone (silent through a handshake), and they would only swallow what is
// written.
func (kp *keypairs) dropSending() (dropped []*session) {
	return kp.clear()
}

// clear takes out every session.
func (kp *keypairs) clear() (dropped []*session) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	dropped = []*session{kp.cur.Load(), kp.prev}
	kp.cur.Store(nil)
	kp.prev = nil
	return dropped
}

// expire takes out the sessions made limit or longer before now.
func (kp *keypairs) expire(now int64, limit time.Duration) (dropped []*session) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if s := kp.cur.Load(); s != nil && time.Duration(now-s.created) >= limit {
		dropped = append(dropped, s)
		kp.cur.Store(nil)
	}
	if s := kp.prev; s != nil && time.Duration(now-s.created) >= limit {
		dropped = append(dropped, s)
		kp.prev = nil
	}
	return dropped
}

// byReset returns the session a stateless reset with the peer's index
// and token is for, or nil if none (the token compared in constant time).
func (kp *keypairs) byReset(index uint32, token []byte) *session {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	var found *session
	for _, s := range []*session{kp.cur.Load(), kp.prev} {
		if s == nil || s.remoteIndex != index {
			continue
		}
		if t := s.peerToken.Load(); t != nil && subtle.ConstantTimeCompare(t[:], token) == 1 {
			found = s
		}
	}
	return found
}

// install makes s a session of p and returns the datagrams that waited
// for it, to be sent once the caller has sent what must go first. path is
// the path's size if already looked up (an initiator's, when its hello was
// sent), or nil.
func (c *Conn) install(p *peer, s *session, identity ed25519.PublicKey, wall time.Time, path *pathAt) [][]byte {
	s.peer = p
	s.identity = identity
	if addr := p.addrLoad(); path != nil && path.addr == addr {
		s.path = path.datagram
	} else {
		s.path = c.pathDatagram(addr) // sizes.go: a system call, before the lock
	}
	now := c.now()
	p.mu.Lock()
	queued, rekey, ok := c.installLocked(p, s, identity, wall, now)
	addr := p.addr
	p.mu.Unlock()
	if ok { // logged with no lock held: the handler is the application's code
		c.log.Debug("vaultudp: session established", "peer", addr, "initiator", s.initiator, "rekey", rekey)
		if s.initiator && !rekey {
			c.event(Event{Kind: EventUp, Addr: addr, Key: identity})
		}
	}
	return queued
}

// installLocked is install's part under p.mu, for the session of our
// answered hello; ok is false if p is gone.
func (c *Conn) installLocked(p *peer, s *session, identity ed25519.PublicKey, wall time.Time, now int64) (queued [][]byte, rekey, ok bool) {
	if p.removed {
		return nil, false, false
	}
	rekey = p.kp.current() != nil
	c.index.add(s)
	return c.makeCurrentLocked(p, s, identity, wall, now, rekey, false), rekey, true
}

// makeCurrentLocked makes s, a completed session of either role, p's
// current one, and returns the datagrams that waited for it. Our own
// attempt, if any, is over (completed, or superseded by the peer's: a
// hello being made now is superseded too); the identity holds the
// address. replace: a new identity took the peer's place, and the old
// one's sessions go. p.mu is held; s is indexed.
func (c *Conn) makeCurrentLocked(p *peer, s *session, identity ed25519.PublicKey, wall time.Time, now int64, rekey, replace bool) [][]byte {
	c.clearInitLocked(p)
	p.hs.gen++
	c.resendLocked(p, identity)     // resend.go: what a reset took, if due, goes first
	queued := c.flushQueueLocked(p) // before s is current: see acquireSession
	c.index.remove(p.kp.promote(s, replace)...)
	p.established = true
	p.identity = identity
	p.lastHandshake = wall
	p.hs.failErr, p.hs.refused, p.hs.silent = nil, nil, false
	p.lastSeen.Store(now)
	c.stats.handshakes.Add(1)
	if rekey {
		c.stats.rekeys.Add(1)
	}
	p.notifyLocked()
	return queued
}

// flushQueueLocked hands the datagrams waiting for a session to the
// caller, which is about to make one current: it sets p.flushing first, so
// that a writer that sees the new session also sees that it must wait
// (acquireSession) until flush has sent them, and does not overtake them.
func (c *Conn) flushQueueLocked(p *peer) [][]byte {
	if len(p.queue) == 0 || p.flushing.Load() != nil {
		return nil
	}
	ch := make(chan struct{})
	p.flushing.Store(&ch)
	return c.takeQueueLocked(p)
}

// flush sends datagrams that waited for s, then lets the writers that
// wait for it (see flushQueueLocked) go on.
func (c *Conn) flush(p *peer, s *session, to netip.AddrPort, queued [][]byte) {
	if len(queued) == 0 {
		return
	}
	for _, b := range queued {
		// The application's datagrams wait for room in the send queue,
		// as its writes would (until Close), under no deadline of its.
		if err := c.sendData(p, s, to, b, c.noDeadline); err != nil {
			c.stats.sendFailed.Add(1) // its write returned long ago
			c.log.Debug("vaultudp: sending queued datagram", "peer", to, "err", err)
		}
	}
	c.endFlush(p)
}

// endFlush lets the writers that wait for the datagrams queued before a
// session go on (see flushQueueLocked).
func (c *Conn) endFlush(p *peer) {
	p.mu.Lock()
	close(*p.flushing.Load())
	p.flushing.Store(nil)
	p.mu.Unlock()
}

// receiveLimit is the age at which a session stops opening datagrams: its
// send limit (rejectAfter) plus a handshake timeout, because the two ends
// made their copies up to a round trip apart, and the datagrams the older
// end sealed last are still on their way.
func (c *Conn) receiveLimit() time.Duration {
	return rejectAfter(c.cfg.KeyLifetime) + c.cfg.HandshakeTimeout
}

// usable reports whether s can carry datagrams now.
func (c *Conn) usable(s *session, now int64) bool {
	return s != nil && time.Duration(now-s.created) < rejectAfter(c.cfg.KeyLifetime) &&
		s.sendCounter.Load() < counterLimit
}

// needsRekey reports whether s is due for renewal. The initiator of a
// session renews it after KeyLifetime, the responder a quarter of a
// lifetime later, so both rarely start at once.
func (c *Conn) needsRekey(s *session, now int64) bool {
	age := time.Duration(now - s.created)
	due := c.cfg.KeyLifetime
	if !s.initiator {
		due += c.cfg.KeyLifetime / 4
	}
	return age >= due || s.sendCounter.Load() >= rekeyAfterMessages
}
