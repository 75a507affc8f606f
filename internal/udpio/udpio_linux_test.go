//go:build !vaultudp_portable

package udpio

// linuxIO: this build reads and writes through udp_linux.go.
const linuxIO = true
