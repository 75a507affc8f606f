package udpio

import (
	"errors"
	"syscall"
)

// errnoRules names the error numbers that mean something particular on
// this system's UDP sockets (errno_windows.go, errno_other.go). The rules
// are plain values, so that the tests can check them on any system with
// another system's numbers.
type errnoRules struct {
	// transient are the read errors after which the socket works on: an
	// ICMP error of an earlier send reported by a later read, or the
	// system briefly short of memory. The read that returns one consumed
	// it; the next read returns the next datagram.
	transient []syscall.Errno
	// msgSize is the error of a datagram that does not fit: on a read,
	// the datagram was cut to the buffer (Windows reports it so, where
	// Unix returns the cut datagram and no error); on a write, it is
	// larger than the socket or the path takes. 0 where the system has
	// none beyond syscall.EMSGSIZE.
	msgSize syscall.Errno
}

// isTransient reports whether err is one of r.transient.
func (r *errnoRules) isTransient(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	for _, e := range r.transient {
		if errno == e {
			return true
		}
	}
	return false
}

// isMsgSize reports whether err is r.msgSize.
func (r *errnoRules) isMsgSize(err error) bool {
	var errno syscall.Errno
	return r.msgSize != 0 && errors.As(err, &errno) && errno == r.msgSize
}

// Transient reports whether err, from a Reader's Read, leaves the socket
// working: the next Read may return a datagram. Those are the errors by
// which a system reports an ICMP error (port or host unreachable) that an
// earlier send drew, on the read that follows it (WSAECONNRESET and
// WSAENETRESET on Windows; ECONNREFUSED and the unreachable errors on a
// connected Unix socket), and the system being short of buffers. A reader
// should read on after one (backing off, should they come in a row) and
// not fail: they are about one peer, not the socket. Deadline and close
// errors are not transient; nor is any other error, which a
// *net.UDPConn returns as it is.
func Transient(err error) bool {
	r := sysErrnos()
	return r.isTransient(err)
}

// tooLargeError is a write's error for a datagram the system would not
// send because of its size, where the system's error for it is not
// syscall.EMSGSIZE (WSAEMSGSIZE on Windows): it matches syscall.EMSGSIZE
// as well as the system's error, so that callers test one error on every
// system, as they do on Unix.
type tooLargeError struct{ err error }

func (e *tooLargeError) Error() string        { return e.err.Error() }
func (e *tooLargeError) Unwrap() error        { return e.err }
func (e *tooLargeError) Is(target error) bool { return target == syscall.EMSGSIZE }

// writeError is err, from a write, as the Socket returns it.
func (r *errnoRules) writeError(err error) error {
	if err != nil && r.isMsgSize(err) {
		return &tooLargeError{err}
	}
	return err
}
