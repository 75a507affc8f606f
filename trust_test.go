package vaultudp

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func pubOf(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// The allow list file: keys, comments, blank lines; a key in a comment is
// not allowed; a bad line is named; a file others may write is refused.
func TestAllowListFile(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	a, b, c := pubOf(GenerateIdentity()), pubOf(GenerateIdentity()), pubOf(GenerateIdentity())
	path := filepath.Join(dir, "allowed")
	text := fmt.Sprintf("# clients\n\n  %s  # alice\n# %s bob left\n%s\n", EncodePublicKey(a), EncodePublicKey(b), EncodePublicKey(c))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	al, err := LoadAllowList(path)
	if err != nil {
		t.Fatal(err)
	}
	if al.Len() != 2 || !al.Contains(a) || al.Contains(b) || !al.Contains(c) {
		t.Fatalf("loaded %d keys (alice %v, bob %v, carol %v), want alice and carol", al.Len(), al.Contains(a), al.Contains(b), al.Contains(c))
	}
	if err := al.VerifyPeer(netip.MustParseAddrPort("192.0.2.1:1"), a); err != nil {
		t.Errorf("VerifyPeer(alice) = %v", err)
	}
	if err := al.VerifyPeer(netip.MustParseAddrPort("192.0.2.1:1"), b); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("VerifyPeer(bob) = %v, want ErrNotAllowed", err)
	}
	if !al.Remove(a) || al.Contains(a) || al.Remove(a) {
		t.Errorf("Remove(alice) did not remove it once")
	}
	if keys := al.Keys(); len(keys) != 1 || !keys[0].Equal(c) {
		t.Errorf("Keys() = %v, want carol's", keys)
	}

	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("# ok\n"+EncodePublicKey(a)+"\nnot-a-key\n"), 0o600)
	if _, err := LoadAllowList(bad); err == nil || !strings.Contains(err.Error(), bad+":3:") || !errors.Is(err, ErrInvalidKey) {
		t.Errorf("LoadAllowList(bad line 3) = %v, want the file and line 3, wrapping ErrInvalidKey", err)
	}
	into := NewAllowList(b)
	if err := into.LoadFile(bad); err == nil || into.Len() != 1 {
		t.Errorf("a failed LoadFile added keys: %d in the list", into.Len())
	}

	writable := filepath.Join(dir, "writable")
	os.WriteFile(writable, []byte(EncodePublicKey(a)+"\n"), 0o600)
	os.Chmod(writable, 0o664)
	if _, err := LoadAllowList(writable); !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "chmod go-w") {
		t.Errorf("LoadAllowList(group-writable) = %v, want fs.ErrPermission with the fix", err)
	}

	var zero AllowList
	var nilList *AllowList
	if zero.VerifyPeer(netip.AddrPort{}, a) == nil || nilList.VerifyPeer(netip.AddrPort{}, a) == nil || nilList.Len() != 0 {
		t.Errorf("an empty or nil AllowList accepted a key")
	}
}

// Over real sockets: a server whose VerifyPeer is an AllowList completes
// a handshake with a listed client and refuses another, whose Handshake
// fails with an error matching ErrPeerRejected (the server tells nothing,
// so the client times out: that is the refusal seen from outside).
func TestAllowListConn(t *testing.T) {
	parallel(t)
	friend, stranger := GenerateIdentity(), GenerateIdentity()
	al := NewAllowList(pubOf(friend))
	server, err := Listen("udp4", "127.0.0.1:0", &Config{VerifyPeer: al.VerifyPeer})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	to := server.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
	for _, c := range []struct {
		name string
		key  ed25519.PrivateKey
		ok   bool
	}{{"friend", friend, true}, {"stranger", stranger, false}} {
		cl, err := Listen("udp4", "127.0.0.1:0", &Config{Identity: c.key, HandshakeTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = cl.Handshake(ctx, to)
		cancel()
		if (err == nil) != c.ok {
			t.Errorf("%s: Handshake = %v, want success %v", c.name, err, c.ok)
		}
	}
	if got := server.Stats().Drops.Rejected; got == 0 {
		t.Errorf("server Drops.Rejected = 0 after refusing the stranger")
	}
}

// KnownHosts: the first key of an address is remembered in the file, the
// same key is accepted again (also by a new KnownHosts on that file: a
// restart), another is refused naming both keys and the line, and line
// numbers stay right when the file has comments and no last newline.
func TestKnownHosts(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "known_hosts")
	kh, err := OpenKnownHosts(path)
	if err != nil {
		t.Fatalf("OpenKnownHosts of a missing file: %v", err)
	}
	a := netip.MustParseAddrPort("192.0.2.1:11000")
	b := netip.MustParseAddrPort("[2001:db8::1]:11000")
	ka, kb, kc := pubOf(GenerateIdentity()), pubOf(GenerateIdentity()), pubOf(GenerateIdentity())
	if err := kh.VerifyPeer(a, ka); err != nil {
		t.Fatalf("first contact: %v", err)
	}
	if err := kh.VerifyPeer(netip.MustParseAddrPort("[::ffff:192.0.2.1]:11000"), ka); err != nil {
		t.Fatalf("the same key at the IPv4-mapped address: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("known hosts file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	// Another process's view: a comment and a line without its newline.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "# added by hand\n%s %s", b, EncodePublicKey(kb))
	f.Close()

	kh2, err := OpenKnownHosts(path)
	if err != nil {
		t.Fatal(err)
	}
	if k, line, ok := kh2.Lookup(b); !ok || line != 3 || !k.Equal(kb) {
		t.Fatalf("Lookup(%v) = %v, line %d, %v; want its key at line 3", b, k, line, ok)
	}
	c := netip.MustParseAddrPort("198.51.100.7:53")
	if err := kh2.VerifyPeer(c, kc); err != nil {
		t.Fatal(err)
	}
	if _, line, _ := kh2.Lookup(c); line != 4 {
		t.Errorf("appended after a line without newline: line %d, want 4", line)
	}
	// The first instance learns of c from the file before appending.
	if err := kh.VerifyPeer(c, ka); !errors.Is(err, ErrKeyChanged) {
		t.Errorf("a key other than the one another process remembered: %v, want ErrKeyChanged", err)
	}

	err = kh2.VerifyPeer(a, kb)
	var kce *KeyChangedError
	if !errors.As(err, &kce) || !errors.Is(err, ErrKeyChanged) {
		t.Fatalf("changed key: %v, want a *KeyChangedError", err)
	}
	msg := err.Error()
	for _, want := range []string{EncodePublicKey(ka), EncodePublicKey(kb), path + ":1", "remove line 1 of " + path} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error lacks %q: %s", want, msg)
		}
	}
	if kce.Line != 1 || !kce.Known.Equal(ka) || !kce.Presented.Equal(kb) || kce.Addr != a {
		t.Errorf("KeyChangedError = %+v", kce)
	}
	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), "\n"); n != 4 {
		t.Errorf("the file has %d lines, want 4:\n%s", n, data)
	}

	os.Chmod(path, 0o666)
	if _, err := OpenKnownHosts(path); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("OpenKnownHosts(world-writable) = %v, want fs.ErrPermission", err)
	}
	os.Chmod(path, 0o600)
	os.WriteFile(path, []byte("192.0.2.1:1\n"), 0o600)
	if _, err := OpenKnownHosts(path); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Errorf("OpenKnownHosts(malformed) = %v, want the line named", err)
	}
}

// Many goroutines meeting one new address at once agree on one key: the
// first written.
func TestKnownHostsConcurrent(t *testing.T) {
	parallel(t)
	kh, err := OpenKnownHosts(filepath.Join(t.TempDir(), "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort("192.0.2.9:9")
	keys := make([]ed25519.PublicKey, 16)
	for i := range keys {
		keys[i] = pubOf(GenerateIdentity())
	}
	var wg sync.WaitGroup
	errs := make([]error, len(keys))
	for i := range keys {
		wg.Go(func() { errs[i] = kh.VerifyPeer(addr, keys[i]) })
	}
	wg.Wait()
	accepted := 0
	for _, err := range errs {
		if err == nil {
			accepted++
		} else if !errors.Is(err, ErrKeyChanged) {
			t.Errorf("VerifyPeer: %v", err)
		}
	}
	data, _ := os.ReadFile(kh.Path())
	if accepted != 1 || strings.Count(string(data), "\n") != 1 {
		t.Errorf("%d keys accepted for one new address, file:\n%s", accepted, data)
	}
}

// Over real sockets: a client trusting on first use through KnownHosts
// accepts the server, then after the server changes identity at the same
// address, refuses it with a KeyChangedError through Handshake's error.
func TestKnownHostsConn(t *testing.T) {
	parallel(t)
	path := filepath.Join(t.TempDir(), "known_hosts")
	server, err := Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	to := server.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
	handshake := func() error {
		kh, err := OpenKnownHosts(path)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := Listen("udp4", "127.0.0.1:0", &Config{VerifyPeer: kh.VerifyPeer, HandshakeTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return cl.Handshake(ctx, to)
	}
	if err := handshake(); err != nil {
		t.Fatalf("first contact: %v", err)
	}
	if err := handshake(); err != nil {
		t.Fatalf("second contact, same key: %v", err)
	}
	server.Close()
	impostor, err := Listen("udp4", to.String(), nil)
	if err != nil {
		t.Skipf("could not take the server's port again: %v", err)
	}
	defer impostor.Close()
	err = handshake()
	var kce *KeyChangedError
	if !errors.Is(err, ErrPeerRejected) || !errors.As(err, &kce) || !kce.Presented.Equal(impostor.PublicKey()) || kce.Line != 1 {
		t.Fatalf("the impostor: %v, want ErrPeerRejected with a KeyChangedError for line 1", err)
	}
}
