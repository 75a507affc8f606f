package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vaultudp/vaultudp"
)

func TestDemo(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"demo", "-n", "2"}, &out, &errb); code != 0 {
		t.Fatalf("demo exited %d: %s", code, errb.String())
	}
	for _, want := range []string{"handshake alice -> bob", `bob   received "message 2 from alice"`, `alice received "message 2 from bob"`, "datagrams in"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestKeygenAndPubkey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	var out, errb bytes.Buffer
	if code := run([]string{"keygen", "-o", path}, &out, &errb); code != 0 {
		t.Fatalf("keygen exited %d: %s", code, errb.String())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	pub := strings.TrimSpace(out.String())
	if _, err := vaultudp.ParsePublicKey(pub); err != nil {
		t.Fatalf("keygen printed %q: %v", pub, err)
	}
	out.Reset()
	if code := run([]string{"pubkey", path}, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != pub {
		t.Fatalf("pubkey exited %d, printed %q, want %q", code, out.String(), pub)
	}
	// keygen never overwrites.
	if code := run([]string{"keygen", "-o", path}, &out, &errb); code != 1 {
		t.Fatalf("keygen over an existing file exited %d, want 1", code)
	}
	// A key readable by others is refused, with the fix in the message.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"pubkey", path}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "chmod 600") {
		t.Fatalf("pubkey on a 0644 file exited %d: %s", code, errb.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"nosuch"}, {"keygen", "extra"}, {"pubkey", "a", "b"}, {"send"}, {"listen"}, {"proxy", "-listen", "127.0.0.1:0"}, {"listen", "a", "b"}, {"demo", "-bogus"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%q exited %d, want 2 (%s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"demo", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "Usage: vaultudp demo") {
		t.Errorf("demo -h exited %d: %s", code, errb.String())
	}
}
