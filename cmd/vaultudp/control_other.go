//go:build !unix

package main

import "io/fs"

// ownedByUser: no owner to check where there are no Unix users.
func ownedByUser(string, fs.FileInfo) error { return nil }

// withUmask runs fn: there is no umask outside Unix.
func withUmask(_ int, fn func() error) error { return fn() }
