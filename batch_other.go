//go:build !linux

package vaultudp

// msgTrunc is the recvmsg flag of a datagram cut to fit the buffer; off
// Linux, truncation is detected by a full buffer alone.
const msgTrunc = 0
