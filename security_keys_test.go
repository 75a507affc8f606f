package vaultudp

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecurityLoadPrivateKeyOwners (item 10): a key that another user
// wrote, or could have replaced, is refused with what to fix, as ssh
// refuses one: a file owned by another user, a directory another user
// owns, a directory group or others may write. A sticky directory such
// as /tmp, and one of the caller's own, are fine.
func TestSecurityLoadPrivateKeyOwners(t *testing.T) {
	parallel(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	const other = 4242
	k := GenerateIdentity()
	write := func(t *testing.T, dir string) string {
		t.Helper()
		path := filepath.Join(dir, "key")
		if err := WritePrivateKey(path, k); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string) string
		want  string // in the error; "" for no error
	}{
		{"own directory", func(t *testing.T, dir string) string { return write(t, dir) }, ""},
		{"file owned by another user", func(t *testing.T, dir string) string {
			p := write(t, dir)
			if err := os.Chown(p, other, other); err != nil {
				t.Fatal(err)
			}
			return p
		}, "chown"},
		{"directory owned by another user", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "theirs")
			os.Mkdir(d, 0o700)
			p := write(t, d)
			if err := os.Chown(d, other, other); err != nil {
				t.Fatal(err)
			}
			return p
		}, "owned by uid 4242"},
		{"directory others may write", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "open")
			os.Mkdir(d, 0o700)
			os.Chmod(d, 0o777)
			return write(t, d)
		}, "chmod go-w"},
		{"sticky directory", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "sticky")
			os.Mkdir(d, 0o700)
			os.Chmod(d, 0o777|os.ModeSticky)
			return write(t, d)
		}, ""},
		{"link into a directory others may write", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "open2")
			os.Mkdir(d, 0o700)
			os.Chmod(d, 0o777)
			p := write(t, d)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(p, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, "chmod go-w"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tc.setup(t, dir)
			got, err := LoadPrivateKey(path)
			t.Logf("LoadPrivateKey: %v", err)
			switch {
			case tc.want == "" && (err != nil || !got.Equal(k)):
				t.Errorf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err %v, want ErrInvalidKey saying %q", err, tc.want)
			}
		})
	}
}
