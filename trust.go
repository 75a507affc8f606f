package vaultudp

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Errors of the trust helpers. The library wraps what Config.VerifyPeer
// returns in ErrPeerRejected, so a refused handshake's error matches both.
var (
	// ErrNotAllowed is returned by AllowList.VerifyPeer for a key that is
	// not in the list.
	ErrNotAllowed = errors.New("vaultudp: key not in the allow list")

	// ErrKeyChanged is matched by the *KeyChangedError that
	// KnownHosts.VerifyPeer returns when an address presents another key
	// than the one remembered for it.
	ErrKeyChanged = errors.New("vaultudp: peer's key changed")
)

// AllowList is a set of public keys, for servers that accept only the
// peers they were told about (as WireGuard does): its VerifyPeer method is
// a Config.VerifyPeer that accepts exactly those keys, from any address.
// It is safe for concurrent use, and keys may be added and removed while a
// Conn uses it: a removed key is refused at its next handshake (its
// current session goes on until then, at most Config.KeyLifetime). The
// zero value is an empty list, which refuses every key.
//
// The file format (LoadAllowList, LoadFile, Load) is one public key a
// line, as EncodePublicKey writes it; text from '#' to the end of a line
// is a comment; blank lines are ignored. It is the format of the vaultudp
// command's -allow-file.
type AllowList struct {
	mu   sync.RWMutex
	keys map[[ed25519.PublicKeySize]byte]struct{}
}

// NewAllowList returns a list of keys.
func NewAllowList(keys ...ed25519.PublicKey) *AllowList {
	a := &AllowList{}
	a.Add(keys...)
	return a
}

// LoadAllowList reads an allow list file (see AllowList for the format).
// A line that is not a key fails the load with an error naming the file
// and the line, wrapping ErrInvalidKey. A file that group or others may
// write is refused with an error wrapping fs.ErrPermission: whoever can
// write it chooses who is let in.
func LoadAllowList(path string) (*AllowList, error) {
	a := &AllowList{}
	if err := a.LoadFile(path); err != nil {
		return nil, err
	}
	return a, nil
}

// LoadFile adds the keys of an allow list file to a, as LoadAllowList
// reads it. On an error nothing is added.
func (a *AllowList) LoadFile(path string) error {
	f, err := openTrustFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return a.Load(f, path)
}

// Load adds the keys read from r, in the allow list file format, to a;
// name is what errors call r (a file name). On an error nothing is added.
func (a *AllowList) Load(r io.Reader, name string) error {
	var keys []ed25519.PublicKey
	err := scanTrustLines(r, name, func(line int, text string) error {
		k, err := ParsePublicKey(text)
		if err != nil {
			return err
		}
		keys = append(keys, k)
		return nil
	})
	if err != nil {
		return err
	}
	a.Add(keys...)
	return nil
}

// Add adds keys to the list. A key that is not ed25519.PublicKeySize
// bytes long is ignored.
func (a *AllowList) Add(keys ...ed25519.PublicKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.keys == nil {
		a.keys = make(map[[ed25519.PublicKeySize]byte]struct{}, len(keys))
	}
	for _, k := range keys {
		if len(k) == ed25519.PublicKeySize {
			a.keys[[ed25519.PublicKeySize]byte(k)] = struct{}{}
		}
	}
}

// Remove removes key from the list and reports whether it was there.
func (a *AllowList) Remove(key ed25519.PublicKey) bool {
	if len(key) != ed25519.PublicKeySize {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	k := [ed25519.PublicKeySize]byte(key)
	_, ok := a.keys[k]
	delete(a.keys, k)
	return ok
}

// Contains reports whether key is in the list. A nil *AllowList contains
// nothing.
func (a *AllowList) Contains(key ed25519.PublicKey) bool {
	if a == nil || len(key) != ed25519.PublicKeySize {
		return false
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.keys[[ed25519.PublicKeySize]byte(key)]
	return ok
}

// Len returns the number of keys in the list.
func (a *AllowList) Len() int {
	if a == nil {
		return 0
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.keys)
}

// Keys returns the keys of the list, in the order of their text form.
func (a *AllowList) Keys() []ed25519.PublicKey {
	if a == nil {
		return nil
	}
	a.mu.RLock()
	keys := make([]ed25519.PublicKey, 0, len(a.keys))
	for k := range a.keys {
		keys = append(keys, ed25519.PublicKey(bytes.Clone(k[:])))
	}
	a.mu.RUnlock()
	slices.SortFunc(keys, func(x, y ed25519.PublicKey) int {
		return strings.Compare(EncodePublicKey(x), EncodePublicKey(y))
	})
	return keys
}

// VerifyPeer has the signature of Config.VerifyPeer: it accepts a key in
// the list, from any address, and refuses any other with an error
// wrapping ErrNotAllowed. A nil *AllowList refuses every key.
func (a *AllowList) VerifyPeer(addr netip.AddrPort, key ed25519.PublicKey) error {
	if !a.Contains(key) {
		return ErrNotAllowed
	}
	return nil
}

// KnownHosts remembers the key of each address it was shown, in a file,
// as ssh's known_hosts does: its VerifyPeer method is a Config.VerifyPeer
// for clients that trust a server's key on first use and then refuse a
// changed one, across restarts. Like any trust on first use, it protects
// against a man in the middle after the first contact, not during it: a
// key known out of band is better pinned (PeerConfig.PublicKey).
//
// The file has one address and key a line, separated by white space
// ("192.0.2.1:11000 KEY"; text from '#' to the end of a line is a comment;
// an IPv4-mapped IPv6 address is its IPv4 address). When an address has
// several lines, the first counts. The file is created (mode 0600, its
// directory 0700) when the first key is remembered. A KnownHosts is safe
// for concurrent use; several processes may share the file (each appends
// one line per new address, re-reading the file first).
type KnownHosts struct {
	path string

	mu    sync.Mutex
	hosts map[netip.AddrPort]knownHost
	lines int // lines in the file, the number an appended line follows
}

type knownHost struct {
	key  ed25519.PublicKey
	line int
}

// KeyChangedError is what KnownHosts.VerifyPeer returns when an address
// presents another key than the one its file remembers. It matches
// ErrKeyChanged. Its message names both keys and the line to remove if
// the change is expected, as ssh's does.
type KeyChangedError struct {
	Addr      netip.AddrPort
	Known     ed25519.PublicKey // the key the file has for Addr
	Presented ed25519.PublicKey // the key Addr presented
	Path      string            // the known hosts file
	Line      int               // the line of Path that has Known
}

func (e *KeyChangedError) Error() string {
	return fmt.Sprintf("the key of %v has changed: it presented %s, but %s:%d remembers %s; someone may be intercepting the traffic (a man in the middle), or the peer got a new identity: if you know it did, remove line %d of %s",
		e.Addr, EncodePublicKey(e.Presented), e.Path, e.Line, EncodePublicKey(e.Known), e.Line, e.Path)
}

// Unwrap returns ErrKeyChanged.
func (e *KeyChangedError) Unwrap() error { return ErrKeyChanged }

// OpenKnownHosts reads the known hosts file at path; a file that does not
// exist yet is an empty one. A malformed line fails with an error naming
// the file and the line; a file that group or others may write is refused
// with an error wrapping fs.ErrPermission (whoever can write it chooses
// which keys are trusted).
func OpenKnownHosts(path string) (*KnownHosts, error) {
	k := &KnownHosts{path: path}
	if err := k.reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Path returns the file's path.
func (k *KnownHosts) Path() string { return k.path }

// Lookup returns the key remembered for addr and the line of the file
// that has it.
func (k *KnownHosts) Lookup(addr netip.AddrPort) (key ed25519.PublicKey, line int, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, ok := k.hosts[normAddr(addr)]
	if !ok {
		return nil, 0, false
	}
	return bytes.Clone(h.key), h.line, true
}

// VerifyPeer has the signature of Config.VerifyPeer. It accepts the key
// remembered for addr; it refuses another with a *KeyChangedError; for an
// address it has no key for, it remembers key (appending a line to the
// file) and accepts it, or returns the error of the write. A Conn given
// it for Config.VerifyPeer remembers every address that completes a
// handshake with it, the ones that contact it included: a client that
// should trust one server only wraps it in a function that refuses the
// other addresses.
func (k *KnownHosts) VerifyPeer(addr netip.AddrPort, key ed25519.PublicKey) error {
	addr = normAddr(addr)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.check(addr, key); err == nil || !errors.Is(err, errNotKnown) {
		return err
	}
	// Another process may have remembered it since: read the file again
	// before appending, so that the first key written wins everywhere.
	if err := k.reloadLocked(); err != nil {
		return err
	}
	if err := k.check(addr, key); !errors.Is(err, errNotKnown) {
		return err
	}
	return k.appendLocked(addr, key)
}

// Add remembers key for addr, as VerifyPeer does for a new address. It
// fails with a *KeyChangedError if the file has another key for addr, and
// does nothing if it has this one.
func (k *KnownHosts) Add(addr netip.AddrPort, key ed25519.PublicKey) error {
	if len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: a public key is %d bytes, not %d", ErrInvalidKey, ed25519.PublicKeySize, len(key))
	}
	return k.VerifyPeer(addr, key)
}

var errNotKnown = errors.New("not known")

// check compares key with the one remembered for addr.
func (k *KnownHosts) check(addr netip.AddrPort, key ed25519.PublicKey) error {
	h, ok := k.hosts[addr]
	switch {
	case !ok:
		return errNotKnown
	case bytes.Equal(h.key, key):
		return nil
	default:
		return &KeyChangedError{Addr: addr, Known: bytes.Clone(h.key), Presented: bytes.Clone(key), Path: k.path, Line: h.line}
	}
}

func (k *KnownHosts) reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reloadLocked()
}

func (k *KnownHosts) reloadLocked() error {
	hosts := map[netip.AddrPort]knownHost{}
	f, err := openTrustFile(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		k.hosts, k.lines = hosts, 0
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("%s: %w", k.path, err)
	}
	err = scanTrustLines(bytes.NewReader(b), k.path, func(line int, text string) error {
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return fmt.Errorf("%w: want ADDRESS:PORT KEY", ErrInvalidKey)
		}
		ap, err := netip.ParseAddrPort(fields[0])
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidKey, err)
		}
		key, err := ParsePublicKey(fields[1])
		if err != nil {
			return err
		}
		if _, dup := hosts[normAddr(ap)]; !dup {
			hosts[normAddr(ap)] = knownHost{key: key, line: line}
		}
		return nil
	})
	if err != nil {
		return err
	}
	lines := bytes.Count(b, []byte("\n"))
	if len(b) > 0 && b[len(b)-1] != '\n' {
		lines++ // appendLocked ends that line first
	}
	k.hosts, k.lines = hosts, lines
	return nil
}

func (k *KnownHosts) appendLocked(addr netip.AddrPort, key ed25519.PublicKey) error {
	if dir := filepath.Dir(k.path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("remembering the key of %v: %w", addr, err)
		}
	}
	f, err := os.OpenFile(k.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("remembering the key of %v: %w", addr, err)
	}
	line := addr.String() + " " + EncodePublicKey(key) + "\n"
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		// A last line without its newline would swallow ours.
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	_, err = f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("remembering the key of %v in %s: %w", addr, k.path, err)
	}
	k.lines++
	k.hosts[addr] = knownHost{key: bytes.Clone(key), line: k.lines}
	return nil
}

// openTrustFile opens a file that decides whom to trust, refusing one
// that group or others may write.
func openTrustFile(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		f.Close()
		return nil, fmt.Errorf("%s has mode %04o: whoever can write it chooses which keys are trusted, so group and others must not (chmod go-w %s): %w", path, perm, path, fs.ErrPermission)
	}
	return f, nil
}

// scanTrustLines calls line for each line of r that is not blank once
// the comment ('#' to the end of the line) is cut, with the text trimmed
// and the line's number; an error names r and the line.
func scanTrustLines(r io.Reader, name string, line func(n int, text string) error) error {
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		if text = strings.TrimSpace(text); text == "" {
			continue
		}
		if err := line(n, text); err != nil {
			return fmt.Errorf("%s:%d: %w", name, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
