package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

// These tests run the built command as a user would.

var (
	binary    string // the vaultudp command, built once by TestMain
	raceBuild bool   // the tests run with -race: so is the command
)

// waitFor bounds every wait on a process.
const waitFor = 20 * time.Second

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vaultudp-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "vaultudp")
	args := []string{"build", "-o", binary}
	if raceBuild {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the command: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// userEnv is an environment whose home, config directory and control
// socket directory are under dir, so that the default key file and known
// hosts never land in the real home.
func userEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") &&
			!strings.HasPrefix(kv, runtimeDirEnv+"=") && !strings.HasPrefix(kv, knownHostsEnv+"=") {
			env = append(env, kv)
		}
	}
	return append(env, "HOME="+dir, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), runtimeDirEnv+"="+filepath.Join(dir, "run"))
}

// result is a finished command.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs the command to its end with stdin, within waitFor.
func runCLI(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("vaultudp %q: %v\nstderr: %s", args, err, r.stderr)
	}
	return r
}

// lines collects a stream's lines and lets a test wait for one.
type lines struct {
	mu   sync.Mutex
	all  []string
	more chan struct{} // closed and replaced on each new line, and at EOF
	eof  bool
}

func newLines(r io.Reader) *lines {
	l := &lines{more: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.all = append(l.all, sc.Text())
			close(l.more)
			l.more = make(chan struct{})
			l.mu.Unlock()
		}
		l.mu.Lock()
		l.eof = true
		close(l.more)
		l.mu.Unlock()
	}()
	return l
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// wait returns the first line that matches re (from the start of the
// stream), waiting up to waitFor for it.
func (l *lines) wait(t *testing.T, what string, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	seen := 0
	for {
		l.mu.Lock()
		for ; seen < len(l.all); seen++ {
			if m := re.FindStringSubmatch(l.all[seen]); m != nil {
				l.mu.Unlock()
				return m
			}
		}
		ch, eof := l.more, l.eof
		l.mu.Unlock()
		if eof {
			t.Fatalf("%s: no line matching %q before the end of output:\n%s", what, re, l)
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%s: no line matching %q within %v:\n%s", what, re, waitFor, l)
		}
	}
}

// proc is a running command (listen, proxy).
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *lines
	done           chan struct{}
}

// startCLI starts a long-running command; it is interrupted at the end of
// the test.
func startCLI(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	so, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	se, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdout: newLines(so), stderr: newLines(se), done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

// stop interrupts the process and waits for it, killing it if it does
// not end within waitFor.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(waitFor):
		p.cmd.Process.Kill()
		<-p.done
	}
}

var listeningRE = regexp.MustCompile(`^listening on (\S+), identity (\S+) \(key file (.+)\); trust: (.+)$`)

// listen starts 'vaultudp listen' with args and returns it, its address
// and its public key.
func listen(t *testing.T, env []string, args ...string) (*proc, string, string) {
	t.Helper()
	p := startCLI(t, env, append([]string{"listen"}, args...)...)
	m := p.stderr.wait(t, "listen", listeningRE)
	return p, m[1], m[2]
}

// keygen writes a key file in dir and returns its path and public key.
func keygen(t *testing.T, env []string, dir, name string) (string, string) {
	t.Helper()
	path := filepath.Join(dir, name)
	r := runCLI(t, env, "", "keygen", "-o", path)
	if r.code != 0 {
		t.Fatalf("keygen exited %d: %s", r.code, r.stderr)
	}
	return path, strings.TrimSpace(r.stdout)
}

// freePort returns a loopback UDP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// A listener with -allow refuses a client with another key, which fails
// with a message that names its key; -v on the listener shows the
// refusal; the allowed client's datagram arrives.
func TestCLIAllowRefuses(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	ckey, cpub := keygen(t, env, dir, "client.key")
	l, addr, _ := listen(t, env, "-v", "-allow", cpub, "127.0.0.1:0")

	r := runCLI(t, env, "from a stranger\n", "send", "-timeout", "1s", addr)
	if r.code != 1 {
		t.Fatalf("send with a key not allowed exited %d, want 1: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "handshake timed out") || !strings.Contains(r.stderr, "does it accept this identity") {
		t.Errorf("refused send's error does not say what failed and why:\n%s", r.stderr)
	}
	if strings.Count(r.stderr, "vaultudp send:") != 1 {
		t.Errorf("refused send's error printed %d times, want once:\n%s", strings.Count(r.stderr, "vaultudp send:"), r.stderr)
	}
	l.stderr.wait(t, "listener's -v log of the refusal", regexp.MustCompile(`peer refused.*not in the allow list`))

	r = runCLI(t, env, "from a friend\n", "send", "-key", ckey, addr)
	if r.code != 0 {
		t.Fatalf("send with the allowed key exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "listener's output", regexp.MustCompile(` from a friend$`))
	if strings.Contains(l.stdout.String(), "stranger") {
		t.Errorf("the refused client's datagram arrived:\n%s", l.stdout)
	}
}

// A client that pins another key than the listener's fails with the
// refusal as the reason, without -v; with -v the library's log shows it.
func TestCLIPinnedKeyMismatch(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	_, addr, pub := listen(t, env, "-allow-any", "127.0.0.1:0")
	_, other := keygen(t, env, dir, "other.key")
	r := runCLI(t, env, "x\n", "send", "-timeout", "1s", "-peer", addr+"="+other, addr)
	if r.code != 1 {
		t.Fatalf("send pinning the wrong key exited %d, want 1: %s", r.code, r.stderr)
	}
	want := "presented " + pub + ", pinned key is " + other
	if !strings.Contains(r.stderr, want) || strings.Count(r.stderr, "vaultudp send:") != 1 {
		t.Errorf("the error does not give the refusal (%q) once:\n%s", want, r.stderr)
	}
	r = runCLI(t, env, "x\n", "send", "-v", "-timeout", "1s", "-peer", addr+"="+other, addr)
	if r.code != 1 || !regexp.MustCompile(`level=WARN msg="vaultudp: peer refused"`).MatchString(r.stderr) {
		t.Errorf("send -v exited %d without logging the refusal:\n%s", r.code, r.stderr)
	}
}

// -allow-file: one key a line, comments and blank lines ignored; a key in
// a comment is not allowed; a bad line is reported with its number.
func TestCLIAllowFile(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	akey, apub := keygen(t, env, dir, "a.key")
	bkey, bpub := keygen(t, env, dir, "b.key")
	list := filepath.Join(dir, "allowed")
	text := fmt.Sprintf("# the clients allowed in\n\n   \n%s   # alice\n# %s bob left\n", apub, bpub)
	if err := os.WriteFile(list, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	l, addr, _ := listen(t, env, "-allow-file", list, "127.0.0.1:0")
	if r := runCLI(t, env, "alice here\n", "send", "-key", akey, addr); r.code != 0 {
		t.Fatalf("alice (allowed) exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "listener", regexp.MustCompile(` alice here$`))
	if r := runCLI(t, env, "bob here\n", "send", "-timeout", "1s", "-key", bkey, addr); r.code != 1 {
		t.Fatalf("bob (commented out) exited %d, want 1: %s", r.code, r.stderr)
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("# ok\n"+apub+"\nnot-a-key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, env, "", "listen", "-allow-file", bad, "127.0.0.1:0")
	if r.code != 2 || !strings.Contains(r.stderr, bad+":3:") {
		t.Errorf("listen with a bad allow file exited %d, want 2 naming line 3: %s", r.code, r.stderr)
	}
}

// -bind is where listen listens and where send sends from; two different
// addresses for listen are refused.
func TestCLIBind(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	want := freePort(t)
	l, addr, _ := listen(t, env, "-allow-any", "-bind", want)
	if addr != want {
		t.Fatalf("listen -bind %s listens on %s", want, addr)
	}
	from := freePort(t)
	if r := runCLI(t, env, "bound\n", "send", "-bind", from, addr); r.code != 0 {
		t.Fatalf("send -bind exited %d: %s", r.code, r.stderr)
	}
	m := l.stdout.wait(t, "listener", regexp.MustCompile(`^(\S+) bound$`))
	if m[1] != from {
		t.Errorf("send -bind %s: the datagram came from %s", from, m[1])
	}
	r := runCLI(t, env, "", "listen", "-allow-any", "-bind", "127.0.0.1:0", freePort(t))
	if r.code != 2 || !strings.Contains(r.stderr, "two addresses") {
		t.Errorf("listen with -bind and another ADDR exited %d, want 2: %s", r.code, r.stderr)
	}
}

// Host names are resolved wherever an address is taken: listen, send,
// -peer, proxy -listen, -to and -forward.
func TestCLIHostNames(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	l, addr, pub := listen(t, env, "-allow-any", "localhost:0")
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	name := "localhost:" + port
	if r := runCLI(t, env, "by name\n", "send", "-peer", name+"="+pub, name); r.code != 0 {
		t.Fatalf("send -peer %s=KEY %s exited %d: %s", name, name, r.code, r.stderr)
	}
	l.stdout.wait(t, "listener", regexp.MustCompile(` by name$`))

	// A name that does not resolve is an error (1), not a usage error.
	r := runCLI(t, env, "", "send", "no-such-host.invalid:1")
	if r.code != 1 || !strings.Contains(r.stderr, "no-such-host.invalid") {
		t.Errorf("send to an unknown host exited %d, want 1 naming it: %s", r.code, r.stderr)
	}

	// A plain UDP echo service behind two proxies, every address a name.
	echo, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	_, echoPort, _ := net.SplitHostPort(echo.LocalAddr().String())
	skey, spub := keygen(t, env, dir, "server.key")
	server := startCLI(t, env, "proxy", "-key", skey, "-allow-any", "-listen", "localhost:0", "-forward", "localhost:"+echoPort)
	m := server.stderr.wait(t, "server proxy", regexp.MustCompile(`^proxy listening on (\S+), to (\S+); trust: `))
	_, serverPort, _ := net.SplitHostPort(m[1])
	if m[2] != "127.0.0.1:"+echoPort {
		t.Errorf("-forward localhost:%s resolved to %s", echoPort, m[2])
	}
	client := startCLI(t, env, "proxy", "-key", filepath.Join(dir, "client.key"), "-status", "20ms",
		"-listen", "localhost:0", "-to", "localhost:"+serverPort, "-remote-key", spub)
	m = client.stderr.wait(t, "client proxy", regexp.MustCompile(`^proxy listening on (\S+), to`))
	entry, err := net.ResolveUDPAddr("udp", m[1])
	if err != nil {
		t.Fatal(err)
	}
	app, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if _, err := app.WriteTo([]byte("ping"), entry); err != nil {
		t.Fatal(err)
	}
	app.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, 2048)
	n, _, err := app.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("no echo through the proxies: %q, %v\nclient proxy:\n%s\nserver proxy:\n%s", buf[:n], err, client.stderr, server.stderr)
	}
	// The client proxy's status shows its flow's session with the server.
	client.stderr.wait(t, "client proxy -status", regexp.MustCompile(`^\s+127\.0\.0\.1:`+serverPort+`\s+`+regexp.QuoteMeta(spub)+`\s+configured\s+yes\s`))
}

// keygen without -o prints a private key that pubkey reads from stdin, as
// wg genkey | wg pubkey; "pubkey -" too.
func TestCLIKeygenPubkeyPipe(t *testing.T) {
	env := userEnv(t.TempDir())
	gen := runCLI(t, env, "", "keygen")
	if gen.code != 0 {
		t.Fatalf("keygen exited %d: %s", gen.code, gen.stderr)
	}
	priv, err := vaultudp.ParsePrivateKey(gen.stdout)
	if err != nil {
		t.Fatalf("keygen printed %q: %v", gen.stdout, err)
	}
	want := vaultudp.EncodePublicKey(priv.Public().(ed25519.PublicKey))
	for _, args := range [][]string{{"pubkey"}, {"pubkey", "-"}} {
		r := runCLI(t, env, gen.stdout, args...)
		if r.code != 0 || strings.TrimSpace(r.stdout) != want {
			t.Errorf("keygen | vaultudp %q: exit %d, printed %q, want %q (%s)", args, r.code, r.stdout, want, r.stderr)
		}
	}
	if r := runCLI(t, env, "not a key\n", "pubkey"); r.code != 1 || !strings.Contains(r.stderr, "stdin") {
		t.Errorf("pubkey of garbage on stdin exited %d: %s", r.code, r.stderr)
	}
}

// listen and proxy keep their identity across restarts: the default key
// file is created once with mode 0600, and so is a -key file; a key file
// others may read is refused, saying why; with no config directory the
// error says to give -key.
func TestCLIKeyPersistence(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	first, _, pub1 := listen(t, env, "-allow-any", "127.0.0.1:0")
	first.stop()
	if !strings.Contains(first.stderr.String(), "created identity key file") {
		t.Errorf("the first start does not say it created the key file:\n%s", first.stderr)
	}
	second, _, pub2 := listen(t, env, "-allow-any", "127.0.0.1:0")
	second.stop()
	if pub1 != pub2 {
		t.Fatalf("listen changed identity across restarts: %s, then %s", pub1, pub2)
	}
	if strings.Contains(second.stderr.String(), "created") {
		t.Errorf("the second start created a key file again:\n%s", second.stderr)
	}
	def := filepath.Join(dir, "config", "vaultudp", "identity.key")
	fi, err := os.Stat(def)
	if err != nil {
		t.Fatalf("default key file: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("default key file mode %04o, want 0600", fi.Mode().Perm())
	}

	key := filepath.Join(dir, "proxy.key")
	idRE := regexp.MustCompile(`^proxy identity (\S+) \(key file (.+)\)$`)
	var ids []string
	for range 2 {
		p := startCLI(t, env, "proxy", "-key", key, "-allow-any", "-listen", "127.0.0.1:0", "-forward", freePort(t))
		m := p.stderr.wait(t, "proxy", idRE)
		p.stderr.wait(t, "proxy", regexp.MustCompile(`^proxy listening on`))
		p.stop()
		if m[2] != key {
			t.Errorf("proxy -key %s uses key file %s", key, m[2])
		}
		ids = append(ids, m[1])
	}
	if ids[0] != ids[1] {
		t.Fatalf("proxy -key changed identity across restarts: %s, then %s", ids[0], ids[1])
	}

	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, env, "", "proxy", "-key", key, "-allow-any", "-listen", "127.0.0.1:0", "-forward", "127.0.0.1:9")
	if r.code != 1 || !strings.Contains(r.stderr, "chmod 600") {
		t.Errorf("proxy with a 0644 key exited %d, want 1 saying chmod 600: %s", r.code, r.stderr)
	}

	var bare []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			bare = append(bare, kv)
		}
	}
	r = runCLI(t, bare, "", "listen", "-allow-any", "127.0.0.1:0")
	if r.code != 1 || !strings.Contains(r.stderr, "-key FILE") {
		t.Errorf("listen with no config directory exited %d, want 1 asking for -key: %s", r.code, r.stderr)
	}
}

// A bad flag value is reported once, with the command's name.
func TestCLIFlagErrorOnce(t *testing.T) {
	env := userEnv(t.TempDir())
	for _, args := range [][]string{
		{"send", "-peer", "bogus", "127.0.0.1:1"},
		{"send", "-peer", "127.0.0.1:1=notakey", "127.0.0.1:1"},
		{"listen", "-peer", "bogus", "127.0.0.1:0"},
		{"listen", "-status", "soon", "127.0.0.1:0"},
		{"proxy", "-allow", "notakey", "-listen", "127.0.0.1:0", "-to", "127.0.0.1:1"},
		{"proxy", "-listen", "127.0.0.1:0", "-forward", "127.0.0.1:1", "-remote-key", "x"},
		{"send", "-peer", "localhost:9", "-peer", "127.0.0.1:9", "127.0.0.1:9"},
	} {
		r := runCLI(t, env, "", args...)
		if r.code != 2 {
			t.Errorf("%q exited %d, want 2: %s", args, r.code, r.stderr)
		}
		if n := strings.Count(r.stderr, "vaultudp "+args[0]+":"); n != 1 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%q: error printed %d times (want one line):\n%s", args, n, r.stderr)
		}
	}
}

// -h of every command exits 0 and lists its flags.
func TestCLIHelp(t *testing.T) {
	env := userEnv(t.TempDir())
	for cmd, flags := range map[string][]string{
		"demo":    {"-n"},
		"keygen":  {"-o"},
		"pubkey":  nil,
		"listen":  {"-allow", "-allow-any", "-allow-file", "-allow-plaintext", "-bind", "-config", "-control", "-key", "-peer", "-policy", "-print-config", "-status", "-status-format", "-v"},
		"send":    {"-bind", "-config", "-key", "-known-hosts", "-peer", "-policy", "-timeout", "-v"},
		"proxy":   {"-allow", "-allow-any", "-allow-file", "-config", "-control", "-flow-idle", "-forward", "-key", "-known-hosts", "-listen", "-max-flows", "-peer", "-policy", "-remote-key", "-status", "-status-format", "-to", "-v"},
		"show":    {"-json"},
		"version": nil,
	} {
		r := runCLI(t, env, "", cmd, "-h")
		if r.code != 0 || !strings.Contains(r.stderr, "Usage: vaultudp "+cmd) {
			t.Errorf("%s -h exited %d: %s", cmd, r.code, r.stderr)
		}
		for _, f := range flags {
			if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(f) + `\b`).MatchString(r.stderr) {
				t.Errorf("%s -h does not list %s:\n%s", cmd, f, r.stderr)
			}
		}
	}
}

// -policy plaintext on both ends: no handshake, the datagram arrives.
func TestCLIPlaintext(t *testing.T) {
	env := userEnv(t.TempDir())
	l, addr, _ := listen(t, env, "-allow-any", "-policy", "plaintext", "127.0.0.1:0")
	if r := runCLI(t, env, "in clear\n", "send", "-policy", "plaintext", addr); r.code != 0 {
		t.Fatalf("plaintext send exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "listener", regexp.MustCompile(` in clear$`))
}

// -status prints a table of the peers: a learned, established client,
// and an address whose key was refused with the reason.
func TestCLIStatus(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	ckey, cpub := keygen(t, env, dir, "client.key")
	l, addr, _ := listen(t, env, "-status", "20ms", "-allow", cpub, "127.0.0.1:0")
	from := freePort(t)
	if r := runCLI(t, env, "hello\n", "send", "-key", ckey, "-bind", from, addr); r.code != 0 {
		t.Fatalf("send exited %d: %s", r.code, r.stderr)
	}
	stranger := freePort(t)
	if r := runCLI(t, env, "hello\n", "send", "-timeout", "1s", "-bind", stranger, addr); r.code != 1 {
		t.Fatalf("refused send exited %d: %s", r.code, r.stderr)
	}
	l.stderr.wait(t, "status header", regexp.MustCompile(`^\s+PEER\s+PUBLIC KEY\s+KIND\s+ESTABLISHED\s+LAST HANDSHAKE\s+IN\s+OUT\s+LAST FAILURE$`))
	l.stderr.wait(t, "status row of the client", regexp.MustCompile(`^\s+`+regexp.QuoteMeta(from)+`\s+`+regexp.QuoteMeta(cpub)+`\s+learned\s+yes\s+\d+s ago\s+5 B, 1 datagram\s+0 B, 0 datagrams\s+-$`))
	l.stderr.wait(t, "status row of the refused address", regexp.MustCompile(`^\s+`+regexp.QuoteMeta(stranger)+`\s+-\s+refused\s+no\s+never\s.*not in the allow list`))
}
