package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vaultudp/vaultudp"
)

// maxFailures bounds the addresses whose last failure a recorder keeps.
const maxFailures = 64

// refusalKept is how long a refused handshake stays the last failure of
// an address when the attempt then times out.
const refusalKept = 30 * time.Second

// failure is the last handshake failure seen for an address.
type failure struct {
	reason string
	at     time.Time
}

// recorder keeps, for one Conn, the last handshake failure per address
// (refusals and failed attempts, from the Conn's Config.Events), for the
// -status table and for error messages. PeerInfo.LastFailure has the
// failures of peers; the recorder adds the addresses refused before they
// became peers, which PeerInfo cannot list. next is where the Conn's log
// goes (stderr with -v), or nil.
type recorder struct {
	mu    sync.Mutex
	fails map[netip.AddrPort]failure
	order []netip.AddrPort // oldest first, to bound fails
	next  slog.Handler
}

func newRecorder(next slog.Handler) *recorder {
	return &recorder{fails: map[netip.AddrPort]failure{}, next: next}
}

// logger returns the Conn's Logger: next, or nothing.
func (r *recorder) logger() *slog.Logger {
	if r.next == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(r.next)
}

// event is the Conn's Config.Events: it records refusals and failed
// attempts.
func (r *recorder) event(e vaultudp.Event) {
	var reason string
	switch e.Kind {
	case vaultudp.EventRefused:
		reason = "handshake refused"
	case vaultudp.EventFailed:
		reason = "handshake failed"
	default:
		return
	}
	if e.Err != nil {
		reason += ": " + shortReason(e.Err.Error(), e.Addr)
	}
	r.record(e.Addr, reason, e.Time)
}

// last returns the last failure recorded for addr.
func (r *recorder) last(addr netip.AddrPort) (failure, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.fails[normAddr(addr)]
	return f, ok
}

// all returns the addresses with a recorded failure, oldest first.
func (r *recorder) all() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]netip.AddrPort(nil), r.order...)
}

func (r *recorder) record(addr netip.AddrPort, reason string, at time.Time) {
	addr = normAddr(addr)
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.fails[addr]; ok && strings.Contains(reason, "timed out") &&
		strings.Contains(old.reason, "refused") && at.Sub(old.at) < refusalKept {
		return // the refusal is why it timed out: keep the reason
	}
	if _, ok := r.fails[addr]; ok {
		for i, a := range r.order {
			if a == addr {
				r.order = append(r.order[:i], r.order[i+1:]...)
				break
			}
		}
	} else if len(r.order) >= maxFailures {
		delete(r.fails, r.order[0])
		r.order = r.order[1:]
	}
	r.order = append(r.order, addr)
	r.fails[addr] = failure{reason: reason, at: at}
}

func normAddr(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// stderrHandler is the handler -v gives: every record, Debug and up, as
// text on w. Without -v it is nil: nothing is logged.
func stderrHandler(verbose bool, w io.Writer) slog.Handler {
	if !verbose {
		return nil
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
}

// status is what -status prints and 'vaultudp show' returns, in text or
// JSON: the command, whom it trusts, its Conns and their peers, and the
// proxy's flow counters.
type status struct {
	Command string       `json:"command"` // listen or proxy
	PID     int          `json:"pid"`
	Time    time.Time    `json:"time"`
	Trust   string       `json:"trust"`
	Proxy   *proxyCounts `json:"proxy,omitempty"`
	Conns   []connStatus `json:"conns"`
}

// connStatus is one Conn: its address, identity, peers and counters.
type connStatus struct {
	Label     string         `json:"label"` // what it is: "listen", "proxy", "flow of client ADDR"
	LocalAddr string         `json:"local_addr"`
	PublicKey string         `json:"public_key"`
	Peers     []peerStatus   `json:"peers"`
	Stats     vaultudp.Stats `json:"stats"`
}

// peerStatus is a row of the table: a peer, or an address whose handshake
// was refused (Kind "refused": not a peer).
type peerStatus struct {
	Addr          string     `json:"addr"`
	PublicKey     string     `json:"public_key,omitempty"`
	Kind          string     `json:"kind"` // configured, learned or refused
	Established   bool       `json:"established"`
	LastHandshake *time.Time `json:"last_handshake,omitempty"`
	BytesIn       uint64     `json:"bytes_in"`
	DatagramsIn   uint64     `json:"datagrams_in"`
	BytesOut      uint64     `json:"bytes_out"`
	DatagramsOut  uint64     `json:"datagrams_out"`
	LastFailure   string     `json:"last_failure,omitempty"`
	FailedAt      *time.Time `json:"failed_at,omitempty"`
}

// snapConn takes the status of a Conn. The refused addresses come from
// rec, which reads the library's log records: the library has no event
// for a refusal, so the recorder is how the command learns of it.
func snapConn(c *vaultudp.Conn, rec *recorder, label string) connStatus {
	cs := connStatus{Label: label, LocalAddr: c.LocalAddr().String(), PublicKey: vaultudp.EncodePublicKey(c.PublicKey()), Stats: c.Stats(), Peers: []peerStatus{}}
	listed := map[netip.AddrPort]bool{}
	for _, p := range c.Peers() {
		listed[normAddr(p.Addr)] = true
		ps := peerStatus{Addr: p.Addr.String(), Kind: "learned", Established: p.Established,
			BytesIn: p.BytesIn, DatagramsIn: p.DatagramsIn, BytesOut: p.BytesOut, DatagramsOut: p.DatagramsOut}
		if p.PublicKey != nil {
			ps.PublicKey = vaultudp.EncodePublicKey(p.PublicKey)
		}
		if p.Configured {
			ps.Kind = "configured"
		}
		if !p.LastHandshake.IsZero() {
			t := p.LastHandshake
			ps.LastHandshake = &t
		}
		if f, ok := rec.last(p.Addr); ok {
			ps.LastFailure, ps.FailedAt = f.reason, &f.at
		} else if p.LastFailure != nil {
			ps.LastFailure = shortReason(p.LastFailure.Error(), p.Addr)
		}
		cs.Peers = append(cs.Peers, ps)
	}
	for _, a := range rec.all() {
		if listed[a] {
			continue
		}
		f, _ := rec.last(a)
		cs.Peers = append(cs.Peers, peerStatus{Addr: a.String(), Kind: "refused", LastFailure: f.reason, FailedAt: &f.at})
	}
	return cs
}

// writeStatus writes st as text (a table per Conn, as wg show) or JSON
// (one object on one line).
func writeStatus(w io.Writer, st status, format string) error {
	if format == "json" {
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	return printStatus(w, st)
}

// printStatus writes a table of the peers of each Conn, as wg show does:
// address, public key, configured or learned, whether a session is up,
// the last handshake, traffic in and out (application payload bytes and
// datagrams, as PeerInfo counts them), and the last failure. Addresses
// whose handshake was refused are listed too (kind "refused"): they are
// not peers.
func printStatus(w io.Writer, st status) error {
	now := st.Time
	var b strings.Builder
	fmt.Fprintf(&b, "%s (pid %d) status at %s; trust: %s\n", st.Command, st.PID, now.UTC().Format(time.RFC3339), st.Trust)
	if p := st.Proxy; p != nil {
		fmt.Fprintf(&b, "flows: %d open (at most %d, idle after %v); %d made, %d expired idle, %d evicted (oldest first), %d failed; dropped: %d queue full, %d from others than the far end\n",
			p.Open, p.Max, p.Idle, p.Made, p.Expired, p.Evicted, p.Failed, p.QueueFull, p.Foreign)
	}
	if len(st.Conns) == 0 {
		b.WriteString("  no connections yet\n")
	}
	for _, c := range st.Conns {
		fmt.Fprintf(&b, "%s %s, identity %s\n", c.Label, c.LocalAddr, c.PublicKey)
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tPUBLIC KEY\tKIND\tESTABLISHED\tLAST HANDSHAKE\tIN\tOUT\tLAST FAILURE")
		for _, p := range c.Peers {
			key, est, hs, fail := "-", "no", "never", "-"
			if p.PublicKey != "" {
				key = p.PublicKey
			} else if p.Kind != "refused" {
				key = "(none yet)"
			}
			if p.Established {
				est = "yes"
			}
			if p.LastHandshake != nil {
				hs = ago(now, *p.LastHandshake)
			}
			if p.LastFailure != "" {
				fail = p.LastFailure
				if p.FailedAt != nil {
					fail += " (" + ago(now, *p.FailedAt) + ")"
				}
			}
			in, out := traffic(p.BytesIn, p.DatagramsIn), traffic(p.BytesOut, p.DatagramsOut)
			if p.Kind == "refused" {
				in, out = "-", "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Addr, key, p.Kind, est, hs, in, out, fail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// traffic is an IN or OUT column: payload bytes and datagrams.
func traffic(bytes, datagrams uint64) string {
	unit := "datagrams"
	if datagrams == 1 {
		unit = "datagram"
	}
	return fmt.Sprintf("%s, %d %s", humanBytes(bytes), datagrams, unit)
}

// humanBytes writes n as wg(8) does: B, KiB, MiB, GiB, TiB.
func humanBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.2f %s", v, unit)
}

// shortReason is an error's text without what the table's row already
// says: the sentinel's prefix and the address.
func shortReason(s string, addr netip.AddrPort) string {
	s = strings.TrimPrefix(s, vaultudp.ErrPeerRejected.Error()+": ")
	return strings.TrimPrefix(strings.TrimPrefix(s, addr.String()+": "), addr.String()+" ")
}

func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String() + " ago"
}

// statusLoop writes the status snapshot() takes to w every interval, in
// format, until done is closed. interval <= 0: it returns at once.
func statusLoop(w io.Writer, interval time.Duration, format string, done <-chan struct{}, snapshot func() status) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			writeStatus(w, stamp(snapshot()), format)
		}
	}
}

// stamp fills in the time and process of a status.
func stamp(st status) status {
	st.Time, st.PID = time.Now(), os.Getpid()
	return st
}
