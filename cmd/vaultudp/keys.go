package main

import (
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vaultudp/vaultudp"
)

// maxKeyInput bounds what pubkey reads from stdin: a key is 44 characters.
const maxKeyInput = 4096

func runKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", "[-o FILE]", stderr)
	out := fs.String("o", "", "the private key file to write (mode 0600; must not exist); none: print the private key to stdout")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: keygen takes no arguments (give the file with -o FILE)", errUsage)
	}
	if *out == "" {
		if err := privateOutput(stdout); err != nil {
			return err
		}
	}
	k := vaultudp.GenerateIdentity()
	if *out == "" {
		// As wg genkey: the private key on stdout, for a pipe into pubkey.
		_, err := fmt.Fprintln(stdout, vaultudp.EncodePrivateKey(k))
		return err
	}
	if err := vaultudp.WritePrivateKey(*out, k); err != nil {
		return fmt.Errorf("writing the key: %w (choose a new file name; keygen never overwrites)", err)
	}
	fmt.Fprintln(stdout, vaultudp.EncodePublicKey(k.Public().(ed25519.PublicKey)))
	return nil
}

// privateOutput refuses to print a private key into a file that group or
// others may read (keygen > FILE with the usual umask 022): a key there
// may already be someone else's, and every later command would refuse it.
func privateOutput(stdout io.Writer) error {
	f, ok := stdout.(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil // a terminal or a pipe: the reader decides
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("stdout is a file that group or others may read (mode %04o): a private key there may already be someone else's. Write it with 'vaultudp keygen -o FILE' (mode 0600), or (umask 077; vaultudp keygen > FILE)", perm)
	}
	return nil
}

func runPubkey(args []string, stdout, stderr io.Writer) error {
	return pubkey(args, os.Stdin, stdout, stderr)
}

func pubkey(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("pubkey", "[FILE|-]", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: give one private key file, or none (or -) to read the key from stdin", errUsage)
	}
	var (
		k   ed25519.PrivateKey
		err error
	)
	if fs.NArg() == 0 || fs.Arg(0) == "-" {
		b, rerr := io.ReadAll(io.LimitReader(stdin, maxKeyInput))
		if rerr != nil {
			return fmt.Errorf("reading the key from stdin: %w", rerr)
		}
		k, err = vaultudp.ParsePrivateKey(string(b))
		clear(b)
		if err != nil {
			return fmt.Errorf("stdin: %w (want one private key, as 'vaultudp keygen' prints)", err)
		}
	} else if k, err = vaultudp.LoadPrivateKey(fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintln(stdout, vaultudp.EncodePublicKey(k.Public().(ed25519.PublicKey)))
	return nil
}

// defaultKeyPath is the identity key file listen and proxy use without
// -key: vaultudp/identity.key under the user's configuration directory
// ($XDG_CONFIG_HOME or ~/.config on Linux, os.UserConfigDir elsewhere).
func defaultKeyPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no default identity key file (%v): give one with -key FILE", err)
	}
	return filepath.Join(dir, "vaultudp", "identity.key"), nil
}

// persistentIdentity loads the identity key at path (the default key file
// if path is empty), creating it with mode 0600 if it does not exist, so
// that a restarted listener or proxy keeps its public key. The key file
// helpers refuse a file others may read.
func persistentIdentity(path string, stderr io.Writer) (ed25519.PrivateKey, string, error) {
	if path == "" {
		p, err := defaultKeyPath()
		if err != nil {
			return nil, "", err
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, "", fmt.Errorf("no usable identity key file: %w (give one with -key FILE)", err)
		}
		path = p
	}
	k, err := vaultudp.LoadPrivateKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		k = vaultudp.GenerateIdentity()
		err = vaultudp.WritePrivateKey(path, k)
		if err == nil {
			fmt.Fprintf(stderr, "created identity key file %s (mode 0600)\n", path)
			return k, path, nil
		}
		if errors.Is(err, fs.ErrExist) { // another process made it first
			k, err = vaultudp.LoadPrivateKey(path)
		}
	}
	if err != nil {
		return nil, "", fmt.Errorf("identity key: %w", err)
	}
	return k, path, nil
}

// serverTrust is whom listen and proxy -forward accept: deny by default,
// as WireGuard. The keys of -allow and -allow-file (and a config file's
// [Peer] sections), the peers pinned with -peer ADDR=KEY at their address,
// or, only when asked for with -allow-any, any signed key (trust on first
// use per address).
type serverTrust struct {
	list      *vaultudp.AllowList
	given     bool // -allow or -allow-file: the list decides
	any       *bool
	plaintext *bool
}

func addServerTrustFlags(fs *flag.FlagSet) *serverTrust {
	st := &serverTrust{list: vaultudp.NewAllowList()}
	fs.Func("allow", "accept peers with this public key (repeatable; with -allow-file, the union); every other key is refused", func(s string) error {
		k, err := vaultudp.ParsePublicKey(s)
		if err != nil {
			return err
		}
		st.list.Add(k)
		st.given = true
		return nil
	})
	fs.Func("allow-file", "accept peers whose public key is in this file: one key a line, '#' starts a comment (repeatable)", func(path string) error {
		st.given = true
		return st.list.LoadFile(path)
	})
	st.any = fs.Bool("allow-any", false, "accept any signed key, remembered per address (trust on first use): stops eavesdroppers, not a man in the middle, and lets anyone in")
	st.plaintext = fs.Bool("allow-plaintext", false, "with -allow and -policy opportunistic or plaintext: accept datagrams in clear from any address too (no key check covers them)")
	return st
}

// apply sets cfg's trust rules and returns the words the startup line
// uses for them. An impossible or unsafe combination is a usage error
// that says why.
func (st *serverTrust) apply(cfg *vaultudp.Config, stderr io.Writer) (string, error) {
	pinned := 0
	for _, p := range cfg.Peers {
		if p.PublicKey != nil {
			pinned++
		}
	}
	inClear := cfg.Policy != vaultudp.RequireEncryption
	var mode string
	switch {
	case *st.any && st.given:
		return "", fmt.Errorf("%w: -allow-any accepts every key, -allow and -allow-file only theirs: give one or the other", errUsage)
	case *st.any:
		cfg.VerifyPeer = nil // the library's rule: any signed key, remembered per address
		mode = "any signed key, trust on first use per address (-allow-any)"
	case st.given:
		if inClear && !*st.plaintext {
			return "", fmt.Errorf("%w: -allow admits only the listed keys, but -policy %v also accepts datagrams in clear from any address, which no key check covers: drop -policy (require-encryption is the default), or add -allow-plaintext to accept that", errUsage, cfg.Policy)
		}
		if st.list.Len() == 0 {
			fmt.Fprintln(stderr, "warning: the allow list is empty: every peer without a pinned key is refused")
		}
		cfg.VerifyPeer = st.list.VerifyPeer
		mode = fmt.Sprintf("allow list of %d %s (-allow, -allow-file)", st.list.Len(), plural(st.list.Len(), "key", "keys"))
	case pinned > 0 && !inClear:
		cfg.VerifyPeer = func(netip.AddrPort, ed25519.PublicKey) error {
			return errors.New("not a pinned peer (-peer ADDR=KEY), and no -allow")
		}
		mode = fmt.Sprintf("%d pinned %s only (-peer ADDR=KEY)", pinned, plural(pinned, "peer", "peers"))
		pinned = 0 // said
	default:
		why := "no peer would be accepted"
		if inClear {
			why = fmt.Sprintf("-policy %v accepts datagrams in clear from any address", cfg.Policy)
		}
		return "", fmt.Errorf("%w: deny by default: %s. Give the peers' public keys with -allow KEY or -allow-file FILE (or a config file's [Peer] sections), or -allow-any to accept anyone (trust on first use)", errUsage, why)
	}
	if pinned > 0 {
		mode += fmt.Sprintf(", and %d pinned %s", pinned, plural(pinned, "peer", "peers"))
	}
	if inClear {
		mode += fmt.Sprintf("; datagrams in clear from any address (-policy %v)", cfg.Policy)
	}
	return mode, nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// knownHostsEnv overrides the default known hosts file (for tests and for
// users who keep it elsewhere); -known-hosts overrides both.
const knownHostsEnv = "VAULTUDP_KNOWN_HOSTS"

// defaultKnownHosts is where send and proxy -to remember servers' keys:
// $VAULTUDP_KNOWN_HOSTS, else vaultudp/known_hosts in the user's
// configuration directory.
func defaultKnownHosts() string {
	if p := os.Getenv(knownHostsEnv); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "vaultudp", "known_hosts")
}

// clientTrust is whom send and proxy -to accept: the one server they
// talk to, with its pinned key (-peer, -remote-key) or the key its known
// hosts file remembers, which the first contact writes there (as ssh).
// Every other address is refused.
type clientTrust struct {
	server netip.AddrPort
	pinned ed25519.PublicKey    // nil: the known hosts file decides
	known  *vaultudp.KnownHosts // nil when pinned
	log    io.Writer
	warn   bool // print a refusal when it happens (proxy); send returns it as its error instead

	mu      sync.Mutex
	changed error // the last *KeyChangedError, for the error message
}

// newClientTrust sets cfg's trust rules for a client of server.
func newClientTrust(cfg *vaultudp.Config, server netip.AddrPort, knownPath string, log io.Writer) (*clientTrust, error) {
	ct := &clientTrust{server: normAddr(server), log: log}
	for _, p := range cfg.Peers {
		if normAddr(p.Addr) == ct.server {
			ct.pinned = p.PublicKey
		}
	}
	if ct.pinned == nil {
		if knownPath == "" {
			return nil, fmt.Errorf("no known hosts file (no user configuration directory): give one with -known-hosts FILE, or pin the server's key with -peer %v=KEY", server)
		}
		kh, err := vaultudp.OpenKnownHosts(knownPath)
		if err != nil {
			return nil, fmt.Errorf("known hosts: %w", err)
		}
		ct.known = kh
	}
	cfg.VerifyPeer = ct.verify
	return ct, nil
}

// verify is the client's Config.VerifyPeer.
func (ct *clientTrust) verify(addr netip.AddrPort, key ed25519.PublicKey) error {
	if normAddr(addr) != ct.server {
		return fmt.Errorf("not the server (%v) this client talks to", ct.server)
	}
	if ct.known == nil {
		return errors.New("not the pinned key") // the library checks a pinned key itself
	}
	_, _, wasKnown := ct.known.Lookup(addr)
	err := ct.known.VerifyPeer(addr, key)
	if err != nil {
		// Said at once, as ssh does, and once per key: the refusal is
		// silent on the wire, and a proxy's client only sees no answer.
		ct.mu.Lock()
		if ct.warn && (ct.changed == nil || ct.changed.Error() != err.Error()) {
			fmt.Fprintf(ct.log, "refused %v: %v\n", ct.server, err)
		}
		ct.changed = err
		ct.mu.Unlock()
		return err
	}
	if !wasKnown {
		if _, line, ok := ct.known.Lookup(addr); ok {
			fmt.Fprintf(ct.log, "new server %v, key %s: remembered in %s:%d\n", ct.server, vaultudp.EncodePublicKey(key), ct.known.Path(), line)
		}
	}
	return nil
}

// describe says how the server's key is trusted, for the startup line.
func (ct *clientTrust) describe() string {
	if ct.pinned != nil {
		return "server key pinned " + vaultudp.EncodePublicKey(ct.pinned)
	}
	if k, line, ok := ct.known.Lookup(ct.server); ok {
		return fmt.Sprintf("server key %s, known (%s:%d)", vaultudp.EncodePublicKey(k), ct.known.Path(), line)
	}
	return fmt.Sprintf("server key not known yet: the first one is remembered in %s", ct.known.Path())
}

// keyChanged returns the refusal of a changed key, if there was one.
func (ct *clientTrust) keyChanged() error {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.changed
}
