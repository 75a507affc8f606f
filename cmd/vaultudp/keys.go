package main

import (
	"bufio"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

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

// allowList is the set of public keys given with -allow and -allow-file.
type allowList struct {
	keys  map[string]bool // by text form
	given bool            // a flag was given: every other key is refused
}

func addAllowFlags(fs *flag.FlagSet) *allowList {
	al := &allowList{keys: map[string]bool{}}
	fs.Func("allow", "accept only peers with this public key (repeatable; with -allow-file, the union); the others are refused", func(s string) error {
		k, err := vaultudp.ParsePublicKey(s)
		if err != nil {
			return err
		}
		al.keys[vaultudp.EncodePublicKey(k)] = true
		al.given = true
		return nil
	})
	fs.Func("allow-file", "accept only peers whose public key is in this file: one key a line, '#' starts a comment (repeatable)", func(path string) error {
		return al.readFile(path)
	})
	return al
}

// readFile adds the keys of an allow file: one public key a line; text
// from '#' to the end of a line is a comment; blank lines are ignored.
func (al *allowList) readFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	al.given = true
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		if text = strings.TrimSpace(text); text == "" {
			continue
		}
		k, err := vaultudp.ParsePublicKey(text)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
		al.keys[vaultudp.EncodePublicKey(k)] = true
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// apply makes cfg refuse every key not in the list, if a list was given.
// Keys pinned by -peer ADDR=KEY are accepted at their address, as the
// library does for pinned keys.
func (al *allowList) apply(cfg *vaultudp.Config, stderr io.Writer) {
	if !al.given {
		return
	}
	if len(al.keys) == 0 {
		fmt.Fprintln(stderr, "warning: the allow list is empty: every peer without a pinned key is refused")
	}
	keys := al.keys
	cfg.VerifyPeer = func(addr netip.AddrPort, key ed25519.PublicKey) error {
		if !keys[vaultudp.EncodePublicKey(key)] {
			return errors.New("not in the allow list (-allow, -allow-file)")
		}
		return nil
	}
}
