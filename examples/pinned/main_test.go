package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp"
)

func TestPinned(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := t.TempDir()
	r, err := run(ctx, dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"server.key", "client.key"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", name, fi.Mode().Perm())
		}
	}
	if r.ToServer != "ping from the client" || r.ToClient != "pong from the server" {
		t.Errorf("datagrams: to server %q, to client %q", r.ToServer, r.ToClient)
	}
	if !errors.Is(r.StrangerErr, vaultudp.ErrHandshakeTimeout) {
		t.Errorf("stranger's Handshake: %v, want ErrHandshakeTimeout", r.StrangerErr)
	}
	if r.Rejected == 0 {
		t.Errorf("server's Drops.Rejected = 0, want the stranger's hellos counted")
	}
}
