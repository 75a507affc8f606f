//go:build !linux || vaultudp_portable

package vaultudp

// systemInterfaces lists the host's interfaces.
func systemInterfaces() ([]netInterface, error) { return stdInterfaces() }
