package vaultudp

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// slots is a keypairs' state in a test: the names of the sessions in
// current and previous ("" for none).
type slots struct{ cur, prev string }

// TestKeypairsTransitions is the table of every slot transition of a
// peer's sessions (keypairs.go): from a state, one operation, the state it
// leaves and the sessions it hands back for the index to forget. The
// sessions are named; N is the one being added or discarded. (Since v4 a
// session exists only once its handshake is complete: replies waiting for
// their final message are the peer's, not slots here.)
func TestKeypairsTransitions(t *testing.T) {
	parallel(t)
	const limit = 10 * time.Second
	cases := []struct {
		name    string
		from    slots
		op      string // promote, promoteReplace, discard, dropSending, clear, expire
		target  string // the session the operation is given (N, or a slot's)
		want    slots
		dropped string // names, sorted, joined
	}{
		{"initiated into nothing", slots{}, "promote", "N", slots{cur: "N"}, ""},
		{"initiated over a current", slots{cur: "C", prev: "P"}, "promote", "N", slots{cur: "N", prev: "C"}, "P"},
		{"responded over a current", slots{cur: "C", prev: "P"}, "promote", "N", slots{cur: "N", prev: "C"}, "P"},
		{"responded into nothing", slots{}, "promote", "N", slots{cur: "N"}, ""},
		{"responded for a new identity: the old go", slots{cur: "C", prev: "P"}, "promoteReplace", "N", slots{cur: "N"}, "C P"},
		{"discard current", slots{cur: "C", prev: "P"}, "discard", "C", slots{prev: "P"}, ""},
		{"discard previous", slots{cur: "C", prev: "P"}, "discard", "P", slots{cur: "C"}, ""},
		{"drop sending", slots{cur: "C", prev: "P"}, "dropSending", "", slots{}, "C P"},
		{"clear", slots{cur: "C", prev: "P"}, "clear", "", slots{}, "C P"},
		{"expire the old ones", slots{cur: "C", prev: "p"}, "expire", "", slots{cur: "C"}, "p"},
		{"expire both", slots{cur: "c", prev: "p"}, "expire", "", slots{}, "c p"},
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
			kp.prev = get(tc.from.prev)
			n := get(tc.target)
			now := int64(limit)
			var dropped []*session
			switch tc.op {
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
			got := slots{name(kp.current()), name(kp.prev)}
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
		})
	}
}
