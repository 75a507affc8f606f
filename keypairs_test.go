package vaultudp

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// slots is a keypairs' state in a test: the names of the sessions in
// current, previous, next and nextOld ("" for none).
type slots struct{ cur, prev, next, old string }

// TestKeypairsTransitions is the table of every slot transition of a
// peer's sessions (keypairs.go): from a state, one operation, the state it
// leaves and the sessions it hands back for the index to forget. The
// sessions are named; N is the one being added, confirmed or discarded.
func TestKeypairsTransitions(t *testing.T) {
	const limit = 10 * time.Second
	cases := []struct {
		name    string
		from    slots
		op      string // useInitiated, addPending, promote, promoteReplace, discard, dropSending, clear, expire, expirePending
		target  string // the session the operation is given (N, or a slot's)
		want    slots
		dropped string // names, sorted, joined
	}{
		{"initiated into nothing", slots{}, "useInitiated", "N", slots{cur: "N"}, ""},
		{"initiated over a current", slots{cur: "C", prev: "P"}, "useInitiated", "N", slots{cur: "N", prev: "C"}, "P"},
		{"initiated with only a waiting responder session: it stays to receive", slots{next: "X", old: "O"}, "useInitiated", "N", slots{cur: "N", prev: "X"}, "O"},
		{"initiated with current and waiting: the waiting go", slots{cur: "C", prev: "P", next: "X", old: "O"}, "useInitiated", "N", slots{cur: "N", prev: "C"}, "O P X"},
		{"first waiting", slots{cur: "C"}, "addPending", "N", slots{cur: "C", next: "N"}, ""},
		{"second waiting keeps the first", slots{next: "X"}, "addPending", "N", slots{next: "N", old: "X"}, ""},
		{"third waiting drops the oldest", slots{next: "X", old: "O"}, "addPending", "N", slots{next: "N", old: "X"}, "O"},
		{"promote next", slots{cur: "C", prev: "P", next: "N", old: "O"}, "promote", "N", slots{cur: "N", prev: "C"}, "O P"},
		{"promote the older waiting", slots{cur: "C", next: "X", old: "N"}, "promote", "N", slots{cur: "N", prev: "C"}, "X"},
		{"promote for a new identity: the old go", slots{cur: "C", prev: "P", next: "N"}, "promoteReplace", "N", slots{cur: "N"}, "C P"},
		{"discard current", slots{cur: "C", prev: "P"}, "discard", "C", slots{prev: "P"}, ""},
		{"discard waiting", slots{next: "X", old: "O"}, "discard", "X", slots{old: "O"}, ""},
		{"drop sending", slots{cur: "C", prev: "P", next: "X"}, "dropSending", "", slots{next: "X"}, "C P"},
		{"clear", slots{cur: "C", prev: "P", next: "X", old: "O"}, "clear", "", slots{}, "C O P X"},
		{"expire the old ones", slots{cur: "C", prev: "p", next: "x"}, "expire", "", slots{cur: "C"}, "p x"},
		{"expire the unconfirmed", slots{cur: "c", next: "x", old: "o"}, "expirePending", "", slots{cur: "c"}, "o x"},
		{"expire the older unconfirmed: the newer moves up", slots{next: "X", old: "o"}, "expirePending", "", slots{next: "X"}, "o"},
		{"expire the newer unconfirmed: the older moves up", slots{next: "x", old: "O"}, "expirePending", "", slots{next: "O"}, "x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A lower-case name is a session made at 0, an upper-case
			// one at limit: at now = limit, lower-case ones are due.
			named := map[string]*session{}
			get := func(name string) *session {
				if name == "" {
					return nil
				}
				if s := named[name]; s != nil {
					return s
				}
				s := &session{}
				if strings.ToUpper(name) == name {
					s.created = int64(limit)
				}
				named[name] = s
				return s
			}
			var kp keypairs
			kp.cur.Store(get(tc.from.cur))
			kp.prev, kp.next, kp.nextOld = get(tc.from.prev), get(tc.from.next), get(tc.from.old)
			n := get(tc.target)
			now := int64(limit)
			var dropped []*session
			switch tc.op {
			case "useInitiated":
				dropped = kp.useInitiated(n)
			case "addPending":
				dropped = []*session{kp.addPending(n)}
			case "promote":
				dropped = kp.promote(n, false)
			case "promoteReplace":
				dropped = kp.promote(n, true)
			case "discard":
				kp.discard(n)
			case "dropSending":
				dropped = kp.dropSending()
			case "clear":
				dropped = kp.clear()
			case "expire":
				dropped = kp.expire(now, limit)
			case "expirePending":
				dropped = kp.expirePending(now, limit)
			default:
				t.Fatalf("no operation %q", tc.op)
			}
			name := func(s *session) string {
				for k, v := range named {
					if v == s && s != nil {
						return k
					}
				}
				return ""
			}
			got := slots{name(kp.current()), name(kp.prev), name(kp.next), name(kp.nextOld)}
			if got != tc.want {
				t.Errorf("slots %+v, want %+v", got, tc.want)
			}
			var names []string
			for _, s := range dropped {
				if s != nil {
					names = append(names, name(s))
				}
			}
			slices.Sort(names)
			if j := strings.Join(names, " "); j != tc.dropped {
				t.Errorf("dropped %q, want %q", j, tc.dropped)
			}
			if pending := kp.next != nil; pending != kp.pending() {
				t.Errorf("pending() = %v with next %v", kp.pending(), kp.next)
			}
		})
	}
}
