//go:build !linux

package vaultudp

// systemInterfaces lists the host's interfaces.
func systemInterfaces() ([]netInterface, error) { return stdInterfaces() }
