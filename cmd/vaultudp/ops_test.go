package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests drive the command as an operator would: deny by default,
// known hosts, a config file, signals, show, JSON status.

// exitCode waits for p to end within waitFor and returns its exit code.
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitFor):
		t.Fatalf("the process did not end within %v", waitFor)
	}
	return p.cmd.ProcessState.ExitCode()
}

// Without -allow, -allow-file, a config file's peers, pinned peers or
// -allow-any, listen and proxy -forward refuse to start, saying what to
// give; the startup line says which trust mode runs.
func TestCLIDenyByDefault(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	for _, args := range [][]string{
		{"listen", "127.0.0.1:0"},
		{"proxy", "-listen", "127.0.0.1:0", "-forward", "127.0.0.1:9"},
		{"listen", "-policy", "plaintext", "127.0.0.1:0"},
	} {
		r := runCLI(t, env, "", args...)
		if r.code != 2 || !strings.Contains(r.stderr, "deny by default") || !strings.Contains(r.stderr, "-allow-any") {
			t.Errorf("%q exited %d, want 2 saying deny by default and how to allow: %s", args, r.code, r.stderr)
		}
	}
	_, cpub := keygen(t, env, dir, "c.key")
	for _, c := range []struct {
		args []string
		mode string
	}{
		{[]string{"-allow", cpub}, "allow list of 1 key (-allow, -allow-file)"},
		{[]string{"-allow-any"}, "any signed key, trust on first use per address (-allow-any)"},
		{[]string{"-peer", "127.0.0.1:9=" + cpub}, "1 pinned peer only (-peer ADDR=KEY)"},
	} {
		p, _, _ := listen(t, env, append(c.args, "127.0.0.1:0")...)
		m := p.stderr.wait(t, "startup line", listeningRE)
		if m[4] != c.mode {
			t.Errorf("listen %q: trust %q, want %q", c.args, m[4], c.mode)
		}
		p.stop()
	}
	if r := runCLI(t, env, "", "listen", "-allow-any", "-allow", cpub, "127.0.0.1:0"); r.code != 2 {
		t.Errorf("-allow-any with -allow exited %d, want 2: %s", r.code, r.stderr)
	}
}

// -allow with a policy that accepts plaintext is refused, saying why;
// -allow-plaintext accepts it knowingly and the startup line says so.
// Over real sockets, a listener with -allow drops a stranger's datagram
// in clear and prints the allowed client's.
func TestCLIPlaintextUnderAllow(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	ckey, cpub := keygen(t, env, dir, "c.key")
	for _, policy := range []string{"opportunistic", "plaintext"} {
		r := runCLI(t, env, "", "listen", "-allow", cpub, "-policy", policy, "127.0.0.1:0")
		if r.code != 2 || !strings.Contains(r.stderr, "in clear from any address") || !strings.Contains(r.stderr, "-allow-plaintext") {
			t.Errorf("-allow -policy %s exited %d, want 2 saying why: %s", policy, r.code, r.stderr)
		}
	}
	p, _, _ := listen(t, env, "-allow", cpub, "-policy", "opportunistic", "-allow-plaintext", "127.0.0.1:0")
	if m := p.stderr.wait(t, "startup", listeningRE); !strings.Contains(m[4], "datagrams in clear from any address (-policy opportunistic)") {
		t.Errorf("the startup line does not say plaintext is accepted: %s", m[4])
	}
	p.stop()

	l, addr, _ := listen(t, env, "-allow", cpub, "127.0.0.1:0")
	stranger, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if _, err := stranger.Write([]byte("INJECTED in clear")); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, env, "from a friend\n", "send", "-key", ckey, addr); r.code != 0 {
		t.Fatalf("send exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "listener", regexp.MustCompile(` from a friend$`))
	if strings.Contains(l.stdout.String(), "INJECTED") {
		t.Errorf("a stranger's plaintext datagram was printed under -allow:\n%s", l.stdout)
	}
}

// send prints the server's key on first contact and remembers it in the
// known hosts file; after the server changes identity at the same address
// send refuses it, naming both keys and the line to remove, as ssh; a key
// pinned with -peer wins over the file.
func TestCLIKnownHosts(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	known := filepath.Join(dir, "config", "vaultudp", "known_hosts")
	first, addr, pub := listen(t, env, "-allow-any", "-key", filepath.Join(dir, "server.key"), "127.0.0.1:0")
	r := runCLI(t, env, "hello\n", "send", addr)
	if r.code != 0 {
		t.Fatalf("first send exited %d: %s", r.code, r.stderr)
	}
	want := fmt.Sprintf("new server %s, key %s: remembered in %s:1", addr, pub, known)
	if !strings.Contains(r.stderr, want) {
		t.Errorf("first contact does not print %q:\n%s", want, r.stderr)
	}
	data, err := os.ReadFile(known)
	if err != nil || strings.TrimSpace(string(data)) != addr+" "+pub {
		t.Fatalf("known hosts file: %q, %v; want %q", data, err, addr+" "+pub)
	}
	r = runCLI(t, env, "again\n", "send", addr)
	if r.code != 0 || !strings.Contains(r.stderr, "known ("+known+":1)") || strings.Contains(r.stderr, "new server") {
		t.Errorf("second send exited %d, or does not say the key is known:\n%s", r.code, r.stderr)
	}
	first.stop()

	// Another identity at the same address.
	l, addr2, other := listen(t, env, "-allow-any", "-key", filepath.Join(dir, "impostor.key"), addr)
	if addr2 != addr {
		t.Fatalf("the impostor listens on %s, not %s", addr2, addr)
	}
	r = runCLI(t, env, "secret\n", "send", "-timeout", "2s", addr)
	if r.code != 1 {
		t.Fatalf("send to a changed key exited %d, want 1: %s", r.code, r.stderr)
	}
	for _, want := range []string{"has changed", pub, other, known + ":1", "remove line 1 of " + known} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(l.stdout.String(), "secret") {
		t.Errorf("the datagram reached the changed key:\n%s", l.stdout)
	}
	// A pinned key wins over the file.
	if r := runCLI(t, env, "pinned\n", "send", "-peer", addr+"="+other, addr); r.code != 0 {
		t.Errorf("send pinning the new key exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "impostor", regexp.MustCompile(` pinned$`))
	// -known-hosts names another file: a first contact there.
	other2 := filepath.Join(dir, "elsewhere")
	if r := runCLI(t, env, "x\n", "send", "-known-hosts", other2, addr); r.code != 0 || !strings.Contains(r.stderr, "remembered in "+other2+":1") {
		t.Errorf("send -known-hosts exited %d: %s", r.code, r.stderr)
	}
}

// A configuration file round trip: the flags print a file (-print-config)
// that, given back with -config and no other flag, runs the same listener
// (same trust line, same identity, the allowed client in, a stranger
// out). A bad line is named; an inline PrivateKey in a file others may
// read is refused; a [Peer] with an Endpoint pins.
func TestCLIConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	ckey, cpub := keygen(t, env, dir, "c.key")
	skey, spub := keygen(t, env, dir, "s.key")
	_, bpub := keygen(t, env, dir, "b.key")
	port := freePort(t)
	args := []string{"listen", "-key", skey, "-allow", cpub, "-allow", bpub, "-peer", "127.0.0.1:9=" + bpub, port}
	r := runCLI(t, env, "", append(args[:len(args)-1:len(args)-1], "-print-config", port)...)
	if r.code != 0 {
		t.Fatalf("-print-config exited %d: %s", r.code, r.stderr)
	}
	t.Logf("printed configuration:\n%s", r.stdout)
	for _, want := range []string{"[Interface]", "ListenAddress = " + port, "PrivateKeyFile = " + skey, "[Peer]\nPublicKey = " + cpub, "PublicKey = " + bpub + "\nEndpoint = 127.0.0.1:9"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the printed configuration lacks %q", want)
		}
	}
	conf := filepath.Join(dir, "listen.conf")
	if err := os.WriteFile(conf, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	byFlags, _, _ := listen(t, env, args[1:]...)
	m1 := byFlags.stderr.wait(t, "by flags", listeningRE)
	byFlags.stop()
	byFile, addr, pub := listen(t, env, "-config", conf)
	m2 := byFile.stderr.wait(t, "by file", listeningRE)
	if m1[1] != m2[1] || m1[2] != m2[2] || m1[4] != m2[4] || pub != spub {
		t.Errorf("the file runs another listener:\nflags: %s\nfile:  %s", m1[0], m2[0])
	}
	if r := runCLI(t, env, "by the book\n", "send", "-key", ckey, addr); r.code != 0 {
		t.Fatalf("allowed client exited %d: %s", r.code, r.stderr)
	}
	byFile.stdout.wait(t, "listener from the file", regexp.MustCompile(` by the book$`))
	if r := runCLI(t, env, "x\n", "send", "-timeout", "1s", addr); r.code != 1 {
		t.Errorf("a stranger exited %d, want 1", r.code)
	}
	// The printed file again is the same file.
	if r2 := runCLI(t, env, "", "listen", "-config", conf, "-print-config"); r2.stdout != r.stdout {
		t.Errorf("-config then -print-config differs:\n%s\nwant:\n%s", r2.stdout, r.stdout)
	}
	byFile.stop()

	// The proxy's file too, both sides: printed, read back, printed again.
	for _, args := range [][]string{
		{"proxy", "-listen", "127.0.0.1:0", "-forward", "127.0.0.1:9", "-allow", cpub, "-max-flows", "9", "-flow-idle", "30s"},
		{"proxy", "-listen", "127.0.0.1:0", "-to", "127.0.0.1:9", "-remote-key", spub, "-known-hosts", filepath.Join(dir, "kh")},
	} {
		r1 := runCLI(t, env, "", append(args, "-print-config")...)
		pconf := filepath.Join(dir, "proxy.conf")
		os.WriteFile(pconf, []byte(r1.stdout), 0o600)
		r2 := runCLI(t, env, "", "proxy", "-config", pconf, "-print-config")
		if r1.code != 0 || r2.code != 0 || r1.stdout != r2.stdout {
			t.Errorf("%q: the printed file (exit %d) read back prints (exit %d) another:\n%s\n%s%s", args, r1.code, r2.code, r1.stdout, r2.stdout, r2.stderr)
		}
	}

	// A command-line flag wins over the file's setting.
	p, other, _ := listen(t, env, "-config", conf, "-bind", "127.0.0.1:0")
	if other == addr {
		t.Errorf("-bind 127.0.0.1:0 with -config: listens on the file's %s", addr)
	}
	p.stop()

	for _, c := range []struct{ text, want string }{
		{"[Interface]\nListenAddress = 127.0.0.1:0\nBogus = 1\n", ":3: unknown [Interface] key Bogus"},
		{"ListenAddress = 127.0.0.1:0\n", ":1: ListenAddress outside a section"},
		{"[Interface]\n[Peer]\nEndpoint = 127.0.0.1:9\n", ":2: [Peer] without PublicKey"},
		{"[Interface]\n[Peer]\nPublicKey = nope\n", ":3: PublicKey"},
		{"[Interface]\nForward = 127.0.0.1:9\n", ":2: Forward does not apply to 'vaultudp listen'"},
	} {
		bad := filepath.Join(dir, "bad.conf")
		os.WriteFile(bad, []byte(c.text), 0o600)
		r := runCLI(t, env, "", "listen", "-config", bad)
		if r.code != 2 || !strings.Contains(r.stderr, bad+c.want) {
			t.Errorf("config %q exited %d, want 2 with %q: %s", c.text, r.code, c.want, r.stderr)
		}
	}
	inline := filepath.Join(dir, "inline.conf")
	gen := runCLI(t, env, "", "keygen")
	os.WriteFile(inline, []byte("[Interface]\nListenAddress = 127.0.0.1:0\nPrivateKey = "+strings.TrimSpace(gen.stdout)+"\n\n[Peer]\nPublicKey = "+cpub+"\n"), 0o644)
	if r := runCLI(t, env, "", "listen", "-config", inline); r.code != 1 || !strings.Contains(r.stderr, "chmod 600") {
		t.Errorf("an inline key in a 0644 file exited %d, want 1 with the fix: %s", r.code, r.stderr)
	}
	os.Chmod(inline, 0o600)
	p, _, ipub := listen(t, env, "-config", inline)
	if m := p.stderr.wait(t, "inline", listeningRE); !strings.Contains(m[3], inline) || ipub == spub {
		t.Errorf("inline key: %s", m[0])
	}
}

// SIGTERM, what systemd sends, stops listen and proxy as SIGINT does:
// exit status 0, after the datagrams already received were printed.
func TestCLISigterm(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	l, addr, _ := listen(t, env, "-allow-any", "127.0.0.1:0")
	if r := runCLI(t, env, "before the signal\n", "send", addr); r.code != 0 {
		t.Fatalf("send exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "listener", regexp.MustCompile(` before the signal$`))
	l.cmd.Process.Signal(syscall.SIGTERM)
	if code := l.exitCode(t); code != 0 {
		t.Errorf("listen exited %d after SIGTERM, want 0:\n%s", code, l.stderr)
	}
	l.stderr.wait(t, "listen's last words", regexp.MustCompile(`^stopped by SIGTERM after 1 datagram$`))

	p := startCLI(t, env, "proxy", "-allow-any", "-listen", "127.0.0.1:0", "-forward", "127.0.0.1:9")
	p.stderr.wait(t, "proxy", regexp.MustCompile(`^proxy listening on`))
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exitCode(t); code != 0 {
		t.Errorf("proxy exited %d after SIGTERM, want 0:\n%s", code, p.stderr)
	}
	p.stderr.wait(t, "proxy's last words", regexp.MustCompile(`^proxy stopped by SIGTERM`))
}

// vaultudp show asks a running listen over its Unix socket, in text and
// JSON, and -status-format json prints one JSON object a line.
func TestCLIShow(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	ckey, cpub := keygen(t, env, dir, "c.key")
	l, addr, pub := listen(t, env, "-allow", cpub, "-status", "50ms", "-status-format", "json", "127.0.0.1:0")
	sock := l.stderr.wait(t, "control socket", regexp.MustCompile(`^control socket (\S+) `))[1]
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket %s: %v, mode %v; want 0600", sock, err, fi.Mode().Perm())
	}
	from := freePort(t)
	if r := runCLI(t, env, "hello\n", "send", "-key", ckey, "-bind", from, addr); r.code != 0 {
		t.Fatalf("send exited %d: %s", r.code, r.stderr)
	}
	l.stdout.wait(t, "listener", regexp.MustCompile(` hello$`))

	r := runCLI(t, env, "", "show")
	if r.code != 0 {
		t.Fatalf("show exited %d: %s", r.code, r.stderr)
	}
	t.Logf("vaultudp show:\n%s", r.stdout)
	for _, re := range []string{
		`(?m)^listen \(pid \d+\) status at .*; trust: allow list of 1 key`,
		`(?m)^listen ` + regexp.QuoteMeta(addr) + `, identity ` + regexp.QuoteMeta(pub) + `$`,
		`(?m)^\s+` + regexp.QuoteMeta(from) + `\s+` + regexp.QuoteMeta(cpub) + `\s+learned\s+yes\s+\d+s ago\s+5 B, 1 datagram\s`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("show lacks %s", re)
		}
	}

	r = runCLI(t, env, "", "show", "-json")
	var all []status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || r.code != 0 {
		t.Fatalf("show -json exited %d: %v\n%s", r.code, err, r.stdout)
	}
	if len(all) != 1 || all[0].Command != "listen" || all[0].PID != l.cmd.Process.Pid || len(all[0].Conns) != 1 {
		t.Fatalf("show -json: %+v", all)
	}
	c := all[0].Conns[0]
	if c.LocalAddr != addr || c.PublicKey != pub || len(c.Peers) != 1 || c.Peers[0].Addr != from ||
		c.Peers[0].PublicKey != cpub || !c.Peers[0].Established || c.Peers[0].BytesIn != 5 || c.Stats.DatagramsIn != 1 {
		t.Errorf("show -json conn: %+v", c)
	}
	// show NAME asks one command.
	if r := runCLI(t, env, "", "show", filepath.Base(sock)); r.code != 0 || !strings.Contains(r.stdout, cpub) {
		t.Errorf("show %s exited %d: %s%s", filepath.Base(sock), r.code, r.stdout, r.stderr)
	}

	// The periodic status, as JSON lines on stderr.
	m := l.stderr.wait(t, "-status-format json", regexp.MustCompile(`^(\{"command":"listen".*"datagrams_in":1.*)$`))
	var st status
	if err := json.Unmarshal([]byte(m[1]), &st); err != nil || st.Trust == "" || len(st.Conns) != 1 {
		t.Errorf("a -status JSON line: %v, %+v", err, st)
	}

	// After the command ends, its socket is gone and show says none runs.
	l.stop()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the control socket outlived the command: %v", err)
	}
	if r := runCLI(t, env, "", "show"); r.code != 0 || !strings.Contains(r.stderr, "no running listen or proxy") {
		t.Errorf("show with none running exited %d: %s", r.code, r.stderr)
	}
}

// keygen refuses to print a private key into a file others may read
// (keygen > FILE with umask 022), and prints it into a 0600 one.
func TestCLIKeygenStdoutFile(t *testing.T) {
	dir := t.TempDir()
	env := userEnv(dir)
	for _, c := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o644, false}, {0o640, false}, {0o600, true}} {
		path := filepath.Join(dir, fmt.Sprintf("k%o", c.mode))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, c.mode)
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, c.mode)
		cmd := exec.Command(binary, "keygen")
		cmd.Env, cmd.Stdout = env, f
		var errb strings.Builder
		cmd.Stderr = &errb
		err = cmd.Run()
		f.Close()
		data, _ := os.ReadFile(path)
		if c.ok {
			if err != nil || len(data) == 0 {
				t.Errorf("keygen > %04o file: %v, %d bytes written", c.mode, err, len(data))
			}
			continue
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || len(data) != 0 || !strings.Contains(errb.String(), "umask 077") {
			t.Errorf("keygen > %04o file: %v, %d bytes written, stderr %q; want exit 1, nothing written, the fix", c.mode, err, len(data), errb.String())
		}
	}
}

// version prints the version and the Go that built it.
func TestCLIVersion(t *testing.T) {
	env := userEnv(t.TempDir())
	for _, arg := range []string{"version", "-version", "--version"} {
		r := runCLI(t, env, "", arg)
		if r.code != 0 || !regexp.MustCompile(`^vaultudp \S.* go1\.\d+\S* \w+/\w+\n$`).MatchString(r.stdout) {
			t.Errorf("vaultudp %s exited %d: %q %s", arg, r.code, r.stdout, r.stderr)
		}
	}
}
