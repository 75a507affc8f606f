//go:build !unix

package vaultudp

import "io/fs"

// checkKeyOwners: files have no Unix owners here; the mode check of
// LoadPrivateKey is all.
func checkKeyOwners(string, fs.FileInfo) error { return nil }
