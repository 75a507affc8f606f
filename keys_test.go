package vaultudp

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyEncodeParseRoundTrip: the text forms are 44 characters of
// standard base64 and parse back to the same keys, surrounding spaces
// and a trailing newline ignored.
func TestKeyEncodeParseRoundTrip(t *testing.T) {
	parallel(t)
	for _, priv := range []ed25519.PrivateKey{hsIdentity(1), hsIdentity(0xff), GenerateIdentity(), GenerateIdentity()} {
		pub := priv.Public().(ed25519.PublicKey)
		ps, ks := EncodePublicKey(pub), EncodePrivateKey(priv)
		if len(ps) != 44 || len(ks) != 44 {
			t.Fatalf("text lengths %d, %d, want 44", len(ps), len(ks))
		}
		if raw, _ := base64.StdEncoding.DecodeString(ks); !bytes.Equal(raw, priv.Seed()) {
			t.Fatal("the private key's text is not its seed")
		}
		for _, s := range []string{ps, " " + ps + "\n", "\t" + ps + "\r\n"} {
			got, err := ParsePublicKey(s)
			if err != nil || !bytes.Equal(got, pub) {
				t.Fatalf("ParsePublicKey(%q) = %x, %v", s, got, err)
			}
		}
		for _, s := range []string{ks, ks + "\n", "  " + ks + "  "} {
			got, err := ParsePrivateKey(s)
			if err != nil || !got.Equal(priv) {
				t.Fatalf("ParsePrivateKey(%q): %v", s, err)
			}
		}
	}
	// A known value: the RFC 8032 test 1 key pair.
	seed, _ := base64.StdEncoding.DecodeString("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
	priv := ed25519.NewKeyFromSeed(seed)
	if got := EncodePublicKey(priv.Public().(ed25519.PublicKey)); got != "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=" {
		t.Fatalf("RFC 8032 public key encodes as %s", got)
	}
}

// TestKeyParseInvalid: bad base64 and wrong lengths are ErrInvalidKey.
func TestKeyParseInvalid(t *testing.T) {
	parallel(t)
	k := GenerateIdentity()
	ps := EncodePublicKey(k.Public().(ed25519.PublicKey))
	enc := base64.StdEncoding.EncodeToString
	bad := []string{
		"",
		"   ",
		"not base64!",
		ps[:43],                    // truncated
		ps[:20] + " " + ps[20:],    // a space inside
		ps + ps,                    // two keys
		strings.TrimRight(ps, "="), // unpadded
		base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)), // URL alphabet
		enc(make([]byte, 31)),
		enc(make([]byte, 33)),
		enc(make([]byte, 64)), // a whole Ed25519 private key, not a seed
		enc(make([]byte, 16)),
	}
	for _, s := range bad {
		if _, err := ParsePublicKey(s); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePublicKey(%q): err = %v, want ErrInvalidKey", s, err)
		}
		if _, err := ParsePrivateKey(s); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePrivateKey(%q): err = %v, want ErrInvalidKey", s, err)
		}
	}
	// The private key's error must not echo the key text.
	ks := EncodePrivateKey(k)
	if _, err := ParsePrivateKey(ks[:43] + "!"); err == nil || strings.Contains(err.Error(), ks[:20]) {
		t.Fatalf("ParsePrivateKey error %v", err)
	}
}

// TestKeyWritePrivateKey: WritePrivateKey makes a 0600 file that loads
// back, and refuses to overwrite an existing file.
func TestKeyWritePrivateKey(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "id.key")
	k := GenerateIdentity()
	if err := WritePrivateKey(path, k); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	content, _ := os.ReadFile(path)
	if string(content) != EncodePrivateKey(k)+"\n" {
		t.Fatalf("key file holds %q", content)
	}
	got, err := LoadPrivateKey(path)
	if err != nil || !got.Equal(k) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}

	// No overwrite: the error says so, and the first key is intact.
	if err := WritePrivateKey(path, GenerateIdentity()); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WritePrivateKey: err = %v, want fs.ErrExist", err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, content) {
		t.Fatal("the key file was overwritten")
	}
	// Nor through a symlink to another file.
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("data"), 0o600)
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(victim, link); err == nil {
		if err := WritePrivateKey(link, k); err == nil {
			t.Fatal("WritePrivateKey wrote through a symlink")
		}
		if b, _ := os.ReadFile(victim); string(b) != "data" {
			t.Fatal("the symlink's target was overwritten")
		}
	}
	// A directory that does not exist: an error, no panic.
	if err := WritePrivateKey(filepath.Join(dir, "no", "such", "dir"), k); err == nil {
		t.Fatal("WritePrivateKey into a missing directory succeeded")
	}
}

// TestKeyLoadPrivateKeyPermissions: a key file group or others may read
// (or write) is refused with ErrInvalidKey and an error that says how to
// fix it; owner-only modes load.
func TestKeyLoadPrivateKeyPermissions(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	k := GenerateIdentity()
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o660, 0o606, 0o620, 0o602, 0o610, 0o777} {
		path := filepath.Join(dir, "k"+mode.String())
		if err := os.WriteFile(path, []byte(EncodePrivateKey(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		got, err := LoadPrivateKey(path)
		if err == nil || got != nil {
			t.Fatalf("mode %04o: loaded", mode)
		}
		if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), "chmod") {
			t.Fatalf("mode %04o: err = %v, want ErrInvalidKey mentioning chmod", mode, err)
		}
		if strings.Contains(err.Error(), EncodePrivateKey(k)[:20]) {
			t.Fatalf("mode %04o: the error shows the key", mode)
		}
	}
	for _, mode := range []fs.FileMode{0o600, 0o400} {
		path := filepath.Join(dir, "ok"+mode.String())
		os.WriteFile(path, []byte(EncodePrivateKey(k)+"\n"), 0o600)
		os.Chmod(path, mode)
		got, err := LoadPrivateKey(path)
		if err != nil || !got.Equal(k) {
			t.Fatalf("mode %04o: %v", mode, err)
		}
	}
	// Owner-only but not a key: ErrInvalidKey naming the file.
	path := filepath.Join(dir, "garbage")
	os.WriteFile(path, []byte("hello\n"), 0o600)
	if _, err := LoadPrivateKey(path); !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), path) {
		t.Fatalf("garbage key file: err = %v", err)
	}
	// Missing file: the os error.
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key file: err = %v", err)
	}
}
