package udpio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

// Winsock's numbers (winerror.h), as golang.org/x/sys/windows has them:
// the rules are checked here with them on every system, and built from
// x/sys/windows on Windows (errno_windows.go).
const (
	wsaEMSGSIZE   syscall.Errno = 10040
	wsaENETRESET  syscall.Errno = 10052
	wsaECONNRESET syscall.Errno = 10054
	wsaENOBUFS    syscall.Errno = 10055
)

// testWindowsRules are errno_windows.go's rules in numbers.
var testWindowsRules = errnoRules{
	transient: []syscall.Errno{wsaECONNRESET, wsaENETRESET, wsaENOBUFS},
	msgSize:   wsaEMSGSIZE,
}

// readErr is err as a failed read of a *net.UDPConn returns it.
func readErr(err error) error {
	return &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("wsarecvfrom", err)}
}

// The rules tell the errors apart however they are wrapped: the ICMP
// reports and buffer shortage are transient, a size error is a size
// error, and everything else (a closed socket, a deadline, a broken
// socket such as x/net's errNotImplemented on Windows) is neither.
func TestErrnoRules(t *testing.T) {
	r := &testWindowsRules
	for _, tc := range []struct {
		err                error
		transient, msgSize bool
	}{
		{readErr(wsaECONNRESET), true, false},
		{fmt.Errorf("read: %w", readErr(wsaENETRESET)), true, false},
		{wsaENOBUFS, true, false},
		{readErr(wsaEMSGSIZE), false, true},
		{readErr(syscall.Errno(10022)), false, false}, // WSAEINVAL
		{net.ErrClosed, false, false},
		{os.ErrDeadlineExceeded, false, false},
		{errors.New("not implemented on windows/amd64"), false, false},
		{nil, false, false},
	} {
		if got := r.isTransient(tc.err); got != tc.transient {
			t.Errorf("isTransient(%v) = %v, want %v", tc.err, got, tc.transient)
		}
		if got := r.isMsgSize(tc.err); got != tc.msgSize {
			t.Errorf("isMsgSize(%v) = %v, want %v", tc.err, got, tc.msgSize)
		}
	}
	// Rules with no size error of their own (Unix) never call one so.
	if (&errnoRules{}).isMsgSize(readErr(syscall.Errno(0))) {
		t.Error("rules without msgSize took errno 0 for a size error")
	}
	// This system's own rules: a closed socket or a deadline is never
	// transient (a reader must stop or return on them).
	for _, err := range []error{net.ErrClosed, os.ErrDeadlineExceeded, readErr(syscall.EINVAL)} {
		if Transient(err) {
			t.Errorf("Transient(%v) on this system", err)
		}
	}
	if !Transient(readErr(syscall.ECONNREFUSED)) && !Transient(readErr(wsaECONNRESET)) {
		t.Error("neither ECONNREFUSED nor WSAECONNRESET is transient on this system")
	}
}

// A write's size error matches syscall.EMSGSIZE (as on Unix) and still
// the system's own error; other errors pass as they are.
func TestWriteSizeError(t *testing.T) {
	r := &testWindowsRules
	sysErr := &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("wsasendto", wsaEMSGSIZE)}
	err := r.writeError(sysErr)
	if !errors.Is(err, syscall.EMSGSIZE) || !errors.Is(err, wsaEMSGSIZE) {
		t.Errorf("writeError(WSAEMSGSIZE) = %v: matches EMSGSIZE %v, WSAEMSGSIZE %v; want both",
			err, errors.Is(err, syscall.EMSGSIZE), errors.Is(err, wsaEMSGSIZE))
	}
	if err.Error() != sysErr.Error() {
		t.Errorf("writeError changed the text: %q, want %q", err, sysErr)
	}
	other := readErr(wsaECONNRESET)
	if got := r.writeError(other); got != other {
		t.Errorf("writeError(%v) = %v, want it unchanged", other, got)
	}
	if r.writeError(nil) != nil {
		t.Error("writeError(nil) != nil")
	}
}
