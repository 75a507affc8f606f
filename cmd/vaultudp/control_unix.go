//go:build unix

package main

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ownedByUser refuses a directory another user owns.
func ownedByUser(dir string, fi fs.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%s belongs to user %d, not to this user (%d)", dir, st.Uid, os.Getuid())
	}
	return nil
}

// withUmask runs fn with the process's umask set to mask. The command
// makes its control socket with it, before it serves anything else.
func withUmask(mask int, fn func() error) error {
	old := syscall.Umask(mask)
	defer syscall.Umask(old)
	return fn()
}
