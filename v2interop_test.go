package vaultudp

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
	"golang.org/x/crypto/curve25519"
)

// The live interop test: a Conn with a ProtocolV2 peer against the
// unmodified Python reference run by ../shared/pyseed/peer.py (no HARNESS
// PATCH option), in both start orders, with and without the reference's
// box key given out of band. It needs python3 with the Debian packages
// python3-nacl, python3-msgpack, python3-psutil and python3-zstandard
// (.ci/run installs them) and the pyseed directory: $VAULTUDP_PYSEED, or
// ../shared/pyseed from the repository root. It skips, saying why, when
// any of them is missing.

// pyseedDir locates the reference's harness, or skips.
func pyseedDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("VAULTUDP_PYSEED")
	if dir == "" {
		// Tests run in the repository root; the harness sits in a
		// "shared" folder beside the checkout, or a few levels up.
		dir = filepath.Join("..", "shared", "pyseed")
		for _, up := range []string{"..", "../..", "../../.."} {
			cand := filepath.Join(up, "shared", "pyseed")
			if _, err := os.Stat(filepath.Join(cand, "peer.py")); err == nil {
				dir = cand
				break
			}
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Skipf("skipped: pyseed directory %q: %v", dir, err)
	}
	if _, err := os.Stat(filepath.Join(abs, "peer.py")); err != nil {
		t.Skipf("skipped: no reference peer at %s (set VAULTUDP_PYSEED to the pyseed directory): %v", abs, err)
	}
	return abs
}

// pyseedPython returns the python3 that has the reference's modules, or
// skips.
func pyseedPython(t *testing.T, dir string) string {
	t.Helper()
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		if py, err = exec.LookPath("python3"); err != nil {
			t.Skip("skipped: no python3 (the live v2 interop test runs the Python reference)")
		}
	}
	cmd := exec.Command(py, "-c", "import nacl.public, nacl.signing, msgpack, psutil, zstandard")
	cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(dir, "shims"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("skipped: %s lacks the reference's modules (apt-get install python3-nacl python3-msgpack python3-psutil python3-zstandard): %v\n%s", py, err, out)
	}
	return py
}

// refPeer is a running peer.py.
type refPeer struct {
	t        *testing.T
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	payloads chan refPayload // what the reference delivered to its application
	events   chan refEvent   // its events (ready, state, error, stopping)
	done     chan struct{}   // closed when its stdout has ended
	stderr   *syncBuffer     // its log
	ready    refEvent        // its ready event

	linesMu  sync.Mutex // guards linesBuf
	linesBuf bytes.Buffer
}

// refPayload is one stdout line of a delivered payload.
type refPayload struct {
	From      string  `json:"from"`
	Hex       string  `json:"hex"`
	Text      *string `json:"text"`
	Encrypted *bool   `json:"encrypted"`
	WireLen   int     `json:"wire_len"`
	at        time.Time
}

// refEvent is one event line.
type refEvent struct {
	Event    string          `json:"event"`
	Port     int             `json:"port"`
	EncKey   string          `json:"enc_key"`
	SignKey  string          `json:"sign_key"`
	MTU      int             `json:"mtu"`
	Patches  []string        `json:"patches"`
	Msg      string          `json:"msg"`
	PeerKeys json.RawMessage `json:"peer_keys"`
	at       time.Time
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRefPeer starts peer.py listening on port with peer as its peer
// (and keysPath as its fixed identity when not empty), waits for its ready
// event and stops it when the test ends.
func startRefPeer(t *testing.T, py, dir string, port int, peer netip.AddrPort, keysPath string) *refPeer {
	t.Helper()
	args := []string{filepath.Join(dir, "peer.py"), "--port", strconv.Itoa(port), "--peer", peer.String(),
		"--events", "-", "--max-seconds", "180"}
	if keysPath != "" {
		args = append(args, "--keys", keysPath)
	}
	cmd := exec.Command(py, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(dir, "shims"), "PYTHONUNBUFFERED=1")
	r := &refPeer{
		t:        t,
		cmd:      cmd,
		payloads: make(chan refPayload, 4096),
		events:   make(chan refEvent, 256),
		done:     make(chan struct{}),
		stderr:   &syncBuffer{},
	}
	cmd.Stderr = r.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the reference: %v", err)
	}
	go r.readStdout(stdout)
	t.Cleanup(r.stop)
	select {
	case ev := <-r.events:
		if ev.Event != "ready" {
			t.Fatalf("reference: first event %q (%s), want ready\nstderr:\n%s", ev.Event, ev.Msg, r.stderr.String())
		}
		if len(ev.Patches) != 0 {
			t.Fatalf("reference runs with harness patches %v", ev.Patches)
		}
		r.ready = ev
	case <-r.done:
		t.Fatalf("reference exited before it was ready\nstderr:\n%s", r.stderr.String())
	case <-time.After(waitLong):
		t.Fatalf("reference not ready after %v\nstderr:\n%s", waitLong, r.stderr.String())
	}
	return r
}

func (r *refPeer) readStdout(stdout io.Reader) {
	defer close(r.done)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		now := time.Now()
		r.linesMu.Lock()
		if r.linesBuf.Len() > 1<<16 {
			r.linesBuf.Reset()
		}
		r.linesBuf.Write(line)
		r.linesBuf.WriteByte('\n')
		r.linesMu.Unlock()
		var probe struct {
			Event *string `json:"event"`
		}
		if json.Unmarshal(line, &probe) != nil {
			continue
		}
		if probe.Event != nil {
			var ev refEvent
			json.Unmarshal(line, &ev)
			ev.at = now
			select {
			case r.events <- ev:
			default: // nobody reads them: drop
			}
			continue
		}
		var p refPayload
		json.Unmarshal(line, &p)
		p.at = now
		select {
		case r.payloads <- p:
		default: // nobody reads them: drop
		}
	}
}

// send writes one line to the reference's stdin: a message to its peers
// or a #! command.
func (r *refPeer) send(line string) {
	r.t.Helper()
	if _, err := io.WriteString(r.stdin, line+"\n"); err != nil {
		r.t.Fatalf("writing to the reference: %v\nstderr:\n%s", err, r.stderr.String())
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 3 s; every wait is
// bounded, and the stdout reader has ended when stop returns.
func (r *refPeer) stop() {
	r.stdin.Close()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(3 * time.Second):
		r.cmd.Process.Kill()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			r.t.Errorf("reference's stdout still open 8 s after SIGTERM and SIGKILL")
		}
	}
	waited := make(chan error, 1)
	go func() { waited <- r.cmd.Wait() }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Kill()
		<-waited
	}
}

func (r *refPeer) lastLines() string {
	r.linesMu.Lock()
	defer r.linesMu.Unlock()
	return r.linesBuf.String()
}

// freeRefPort returns a UDP port on 127.0.0.1 that nobody uses now, in the
// reference's port range [1500, 65000].
func freeRefPort(t *testing.T) netip.AddrPort {
	t.Helper()
	for range 100 {
		a := deadPort(t, "udp4", "127.0.0.1")
		if int(a.Port()) == v2.ReferenceClampPort(int(a.Port())) {
			return a
		}
	}
	t.Fatal("no free port in [1500, 65000]")
	return netip.AddrPort{}
}

// listenV2T listens on 127.0.0.1 (on addr when valid, else on a free port
// in the reference's range) with cfg.
func listenV2T(t *testing.T, addr netip.AddrPort, cfg *Config) *Conn {
	t.Helper()
	if addr.IsValid() {
		return listenT(t, "udp4", addr.String(), cfg)
	}
	for range 100 {
		c := listenT(t, "udp4", "127.0.0.1:0", cfg)
		if p := int(addrOf(c).Port()); p == v2.ReferenceClampPort(p) {
			return c
		}
		c.Close()
	}
	t.Fatal("no free port in [1500, 65000]")
	return nil
}

// refKeys writes a fixed identity for peer.py --keys and returns its
// public keys.
func refKeys(t *testing.T) (path string, boxPub []byte, signPub ed25519.PublicKey) {
	t.Helper()
	var encPriv, seed [32]byte
	rand.Read(encPriv[:])
	rand.Read(seed[:])
	boxPub, err := curve25519.X25519(encPriv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	signPub = ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
	b, _ := json.Marshal(map[string]string{
		"enc_private":  v2.B64.EncodeToString(encPriv[:]),
		"sign_private": v2.B64.EncodeToString(seed[:]),
	})
	path = filepath.Join(t.TempDir(), "reference-keys.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, boxPub, signPub
}

// goReader reads c until it is closed, handing datagrams to a channel.
type goReader struct {
	ch   chan goRead
	done chan struct{}
}

type goRead struct {
	data []byte
	from netip.AddrPort
	at   time.Time
}

func startGoReader(c *Conn) *goReader {
	g := &goReader{ch: make(chan goRead, 4096), done: make(chan struct{})}
	go func() {
		defer close(g.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, ErrClosed) {
					return
				}
				continue
			}
			select {
			case g.ch <- goRead{data: bytes.Clone(buf[:n]), from: from, at: time.Now()}:
			default:
			}
		}
	}()
	return g
}

func TestV2InteropReference(t *testing.T) {
	t.Parallel() // beside everything: its Go side does little, the reference's timers take its time
	dir := pyseedDir(t)
	py := pyseedPython(t, dir)
	cases := []struct {
		name    string
		goFirst bool
		keyOOB  bool // the reference's keys given to Go out of band
		probe   bool // Config.V2KeyProbe
		within  time.Duration
	}{
		{"go-first", true, false, false, 25 * time.Second},
		{"reference-first", false, false, false, 25 * time.Second},
		{"go-first/key-given", true, true, false, 2 * time.Second},
		{"reference-first/key-given", false, true, false, 2 * time.Second},
		{"reference-first/probe", false, false, true, 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v2Interop(t, py, dir, tc.goFirst, tc.keyOOB, tc.probe, tc.within)
		})
	}
}

// v2Interop runs one case: both sides up (in the given order), then each
// writes a datagram every 50 ms until one from the other side has arrived
// sealed on each side, which must happen within `within` of the second
// side's start.
func v2Interop(t *testing.T, py, dir string, goFirst, keyOOB, probe bool, within time.Duration) {
	refAddr := freeRefPort(t)
	pc := PeerConfig{Addr: refAddr, Protocol: ProtocolV2}
	keysPath := ""
	if keyOOB {
		var box []byte
		var sign ed25519.PublicKey
		keysPath, box, sign = refKeys(t)
		pc.BoxKey, pc.PublicKey = box, sign
	}
	cfg := &Config{Peers: []PeerConfig{pc}, V2KeyProbe: probe} // Policy: RequireEncryption

	var c *Conn
	var ref *refPeer
	var t0 time.Time
	if goFirst {
		c = listenV2T(t, netip.AddrPort{}, cfg)
		time.Sleep(200 * time.Millisecond) // Go's start-up traffic goes nowhere
		ref = startRefPeer(t, py, dir, int(refAddr.Port()), addrOf(c), keysPath)
		t0 = ref.ready.at
	} else {
		goAddr := freeRefPort(t)
		ref = startRefPeer(t, py, dir, int(refAddr.Port()), goAddr, keysPath)
		time.Sleep(200 * time.Millisecond) // its add_peer key exchange goes nowhere
		t0 = time.Now()
		c = listenV2T(t, goAddr, cfg)
	}
	goAddr := addrOf(c)
	rd := startGoReader(c)
	defer func() {
		c.Close()
		select {
		case <-rd.done:
		case <-time.After(waitLong):
			t.Error("Go reader did not end")
		}
	}()

	var goToRef, refToGo time.Duration // when the first sealed datagram arrived, from t0
	deadline := time.NewTimer(within + time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; goToRef == 0 || refToGo == 0; i++ {
		if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("go-%d", i)), refAddr); err != nil && !errors.Is(err, ErrNoSession) {
			t.Fatalf("write to the reference: %v", err)
		}
		ref.send(fmt.Sprintf("ref-%d", i))
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("after %v: Go→reference sealed at %v, reference→Go at %v (0: not yet)\nGo stats: %+v\nreference stdout:\n%s\nreference stderr:\n%s",
				time.Since(t0), goToRef, refToGo, c.Stats(), ref.lastLines(), ref.stderr.String())
		case <-ref.done:
			t.Fatalf("the reference exited\nstderr:\n%s", ref.stderr.String())
		}
	drain:
		for {
			select {
			case p := <-ref.payloads:
				if p.From != goAddr.String() {
					t.Fatalf("reference got a payload from %s, want %s (Go sends from its listening port)", p.From, goAddr)
				}
				if p.Encrypted == nil || !*p.Encrypted {
					t.Fatalf("reference got a plaintext payload from Go: %+v", p)
				}
				if goToRef == 0 {
					goToRef = p.at.Sub(t0)
				}
			case r := <-rd.ch:
				if r.from != refAddr {
					t.Fatalf("Go read from %v, want the reference's configured address %v", r.from, refAddr)
				}
				if !bytes.HasPrefix(r.data, []byte("ref-")) {
					t.Fatalf("Go read %q", r.data)
				}
				if refToGo == 0 {
					refToGo = r.at.Sub(t0) // sealed: RequireEncryption drops plaintext payloads
				}
			default:
				break drain
			}
		}
	}
	t.Logf("key exchange with the reference (%s first, key given: %v, probe: %v): Go→reference sealed after %v, reference→Go sealed after %v (bound %v); Go stats: %d key exchanges accepted, %d plaintext payloads dropped",
		map[bool]string{true: "Go", false: "reference"}[goFirst], keyOOB, probe, goToRef.Round(time.Millisecond), refToGo.Round(time.Millisecond), within,
		c.Stats().V2KeyExchanges, c.Stats().Drops.Policy)
	if goToRef > within || refToGo > within {
		t.Errorf("sealed both ways after %v and %v: want within %v", goToRef, refToGo, within)
	}
	info := c.Peers()
	if len(info) != 1 || info[0].Protocol != ProtocolV2 || !info[0].Established || info[0].Addr != refAddr {
		t.Errorf("Peers() = %+v, want one established ProtocolV2 peer at %v", info, refAddr)
	}
	// Its signing key as the reference announces it.
	if got := v2.B64.EncodeToString(info[0].PublicKey); got != ref.ready.SignKey {
		t.Errorf("PeerInfo.PublicKey %s, the reference's sign_key is %s", got, ref.ready.SignKey)
	}
	// The reference holds Go's keys under Go's listening address.
	ref.send("#!state")
	box, _ := c.V2PublicKeys()
	timeout := time.After(waitLong)
	for {
		select {
		case ev := <-ref.events:
			if ev.Event != "state" {
				continue
			}
			var keys map[string]struct {
				EncKey string `json:"enc_key"`
			}
			json.Unmarshal(ev.PeerKeys, &keys)
			if k, ok := keys[goAddr.String()]; !ok || k.EncKey != v2.B64.EncodeToString(box) {
				t.Errorf("the reference holds %s for %v, want Go's enc_key %s", ev.PeerKeys, goAddr, v2.B64.EncodeToString(box))
			}
			return
		case <-timeout:
			t.Fatal("no state event from the reference")
		}
	}
}
