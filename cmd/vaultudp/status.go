package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
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

// recorder is a slog.Handler for one Conn's Config.Logger: it keeps the
// last handshake failure per address (refusals and failed attempts, which
// the library logs), for the -status table and for error messages, and
// passes every record on to next (stderr with -v) if next is not nil.
// PeerInfo.LastFailure has the failures of peers; the recorder adds the
// addresses refused before they became peers, which PeerInfo cannot list.
type recorder struct {
	mu    sync.Mutex
	fails map[netip.AddrPort]failure
	order []netip.AddrPort // oldest first, to bound fails
	next  slog.Handler
}

func newRecorder(next slog.Handler) *recorder {
	return &recorder{fails: map[netip.AddrPort]failure{}, next: next}
}

// logger returns a Logger whose records go to r.
func (r *recorder) logger() *slog.Logger { return slog.New(recHandler{r: r, next: r.next}) }

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

// recHandler is the slog.Handler of a recorder.
type recHandler struct {
	r    *recorder
	next slog.Handler
}

// Enabled accepts every level: failed handshakes are Debug records.
func (h recHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recHandler) Handle(ctx context.Context, rec slog.Record) error {
	if strings.Contains(rec.Message, "refused") || strings.Contains(rec.Message, "failed") {
		var (
			addr    netip.AddrPort
			errText string
			reason  = strings.TrimPrefix(rec.Message, "vaultudp: ")
		)
		rec.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "peer":
				if ap, ok := a.Value.Any().(netip.AddrPort); ok {
					addr = ap
				}
			case "err":
				errText = a.Value.String()
			}
			return true
		})
		if errText != "" {
			reason += ": " + shortReason(errText, addr)
		}
		if addr.IsValid() {
			h.r.record(addr, reason, rec.Time)
		}
	}
	if h.next != nil && h.next.Enabled(ctx, rec.Level) {
		return h.next.Handle(ctx, rec)
	}
	return nil
}

func (h recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if h.next != nil {
		h.next = h.next.WithAttrs(as)
	}
	return h
}

func (h recHandler) WithGroup(name string) slog.Handler {
	if h.next != nil {
		h.next = h.next.WithGroup(name)
	}
	return h
}

// stderrHandler is the handler -v gives: every record, Debug and up, as
// text on w. Without -v it is nil: nothing is logged.
func stderrHandler(verbose bool, w io.Writer) slog.Handler {
	if !verbose {
		return nil
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
}

// watched is a Conn the status table shows.
type watched struct {
	conn  *vaultudp.Conn
	rec   *recorder
	label string // what it is, e.g. "listen" or "flow of client ADDR"
}

// printStatus writes a table of the peers of each Conn, as wg show does:
// address, public key, configured or learned, whether a session is up,
// the last handshake, traffic in and out (application payload bytes and
// datagrams, as PeerInfo counts them), and the last failure. Addresses
// whose handshake was refused are listed too (kind "refused"): they are
// not peers.
func printStatus(w io.Writer, now time.Time, conns []watched) error {
	var b strings.Builder
	fmt.Fprintf(&b, "status at %s\n", now.UTC().Format(time.RFC3339))
	if len(conns) == 0 {
		b.WriteString("  no connections yet\n")
	}
	for _, c := range conns {
		fmt.Fprintf(&b, "%s %v, identity %s\n", c.label, c.conn.LocalAddr(), vaultudp.EncodePublicKey(c.conn.PublicKey()))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tPUBLIC KEY\tKIND\tESTABLISHED\tLAST HANDSHAKE\tIN\tOUT\tLAST FAILURE")
		peers := c.conn.Peers()
		listed := map[netip.AddrPort]bool{}
		for _, p := range peers {
			listed[normAddr(p.Addr)] = true
			key, kind, est, hs := "(none yet)", "learned", "no", "never"
			if p.PublicKey != nil {
				key = vaultudp.EncodePublicKey(p.PublicKey)
			}
			if p.Configured {
				kind = "configured"
			}
			if p.Established {
				est = "yes"
			}
			if !p.LastHandshake.IsZero() {
				hs = ago(now, p.LastHandshake)
			}
			fail := lastFailure(c.rec, p.Addr, now)
			if p.LastFailure != nil && fail == "-" {
				fail = shortReason(p.LastFailure.Error(), p.Addr)
			}
			fmt.Fprintf(tw, "  %v\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Addr, key, kind, est, hs,
				traffic(p.BytesIn, p.DatagramsIn), traffic(p.BytesOut, p.DatagramsOut), fail)
		}
		for _, a := range c.rec.all() {
			if !listed[a] {
				fmt.Fprintf(tw, "  %v\t-\trefused\tno\tnever\t-\t-\t%s\n", a, lastFailure(c.rec, a, now))
			}
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

func lastFailure(r *recorder, addr netip.AddrPort, now time.Time) string {
	f, ok := r.last(addr)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%s (%s)", f.reason, ago(now, f.at))
}

func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String() + " ago"
}

// statusLoop prints the status of conns() to w every interval until done
// is closed. interval <= 0: it returns at once.
func statusLoop(w io.Writer, interval time.Duration, done <-chan struct{}, conns func() []watched) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			printStatus(w, now, conns())
		}
	}
}
