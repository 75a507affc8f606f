//go:build unix

package vaultudp

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// checkKeyOwners refuses a key file fi at path that another user owns,
// or that lies in or below a directory another user could change (see
// LoadPrivateKey), as ssh's safe_path does for its files.
func checkKeyOwners(path string, fi fs.FileInfo) error {
	me := os.Geteuid()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != me && st.Uid != 0 {
		return fmt.Errorf("%w: %s is owned by uid %d, not by you (uid %d) or root: someone else may have written it (chown %d %s)",
			ErrInvalidKey, path, st.Uid, me, me, path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := checkKeyDirs(path, abs, me); err != nil {
		return err
	}
	// Through a symbolic link, the directories of the file itself too.
	if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
		return checkKeyDirs(path, real, me)
	}
	return nil
}

// checkKeyDirs checks the directories above abs, up to the root.
func checkKeyDirs(path, abs string, me int) error {
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		di, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if st, ok := di.Sys().(*syscall.Stat_t); ok && int(st.Uid) != me && st.Uid != 0 {
			return fmt.Errorf("%w: %s is in %s, owned by uid %d, not by you (uid %d) or root: its owner can replace the key (move the key to a directory of yours)",
				ErrInvalidKey, path, dir, st.Uid, me)
		}
		if perm := di.Mode(); perm.Perm()&0o022 != 0 && perm&fs.ModeSticky == 0 {
			return fmt.Errorf("%w: %s is in %s, which group or others may write (mode %04o): they can replace the key (chmod go-w %s)",
				ErrInvalidKey, path, dir, perm.Perm(), dir)
		}
		if dir == filepath.Dir(dir) {
			return nil // the root
		}
	}
}
