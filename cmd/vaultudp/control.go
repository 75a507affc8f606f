package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runtimeDirEnv overrides the directory of the control sockets.
const runtimeDirEnv = "VAULTUDP_RUNTIME_DIR"

// controlTimeout bounds one exchange on a control socket.
const controlTimeout = 15 * time.Second

// runtimeDir is where listen and proxy put their control sockets and
// where 'vaultudp show' looks for them, as wg's /var/run/wireguard:
// $VAULTUDP_RUNTIME_DIR, else $XDG_RUNTIME_DIR/vaultudp, else
// vaultudp-UID in the temporary directory.
func runtimeDir() string {
	if d := os.Getenv(runtimeDirEnv); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "vaultudp")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("vaultudp-%d", os.Getuid()))
}

// privateDir makes dir (mode 0700) if it does not exist, and refuses one
// that another user owns or that group or others may write: in a shared
// temporary directory, someone else could have made it first, to read
// the status or to answer 'vaultudp show' in the commands' place.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := ownedByUser(dir, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s has mode %04o: group and others must not write it (chmod go-w %s)", dir, perm, dir)
	}
	return nil
}

// control is a running command's control socket.
type control struct {
	ln   net.Listener
	path string
	wg   sync.WaitGroup
}

func (c *control) close() {
	if c == nil {
		return
	}
	c.ln.Close()
	c.wg.Wait()
	os.Remove(c.path)
}

// startControl serves the command's status on a Unix socket (mode 0600,
// in a directory of mode 0700: only its user may ask): -control, else
// COMMAND-ADDR.sock in runtimeDir. A client writes one line, "text" or
// "json", and reads the status to the end. -control off: none (nil).
func (pf *peerFlags) startControl(command string, addr net.Addr, snapshot func() status, log io.Writer) (*control, error) {
	path := *pf.control
	if path == "off" {
		return nil, nil
	}
	if path == "" {
		dir := runtimeDir()
		if err := privateDir(dir); err != nil {
			return nil, fmt.Errorf("control socket directory: %w (give a socket with -control PATH, or -control off)", err)
		}
		path = filepath.Join(dir, command+"-"+addr.String()+".sock")
	}
	ln, err := listenUnix(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w (give another with -control PATH, or -control off)", err)
	}
	c := &control{ln: ln, path: path}
	fmt.Fprintf(log, "control socket %s ('vaultudp show' reads it)\n", path)
	c.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.wg.Go(func() { serveControl(conn, snapshot) })
		}
	})
	return c, nil
}

// listenUnix listens on a Unix socket at path, replacing a socket file
// that no process serves any more (a crashed command's); a live one is an
// error, so that two commands never take each other's socket.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is served by another process", path)
		}
		os.Remove(path)
	}
	var ln net.Listener
	err := withUmask(0o177, func() (err error) { // the socket is made 0600, with no window
		ln, err = net.Listen("unix", path)
		return err
	})
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // close removes it, once
	return ln, nil
}

func serveControl(conn net.Conn, snapshot func() status) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(controlTimeout))
	line, err := bufio.NewReader(io.LimitReader(conn, 64)).ReadString('\n')
	if err != nil {
		return
	}
	format := strings.TrimSpace(line)
	if format != "json" {
		format = "text"
	}
	writeStatus(conn, stamp(snapshot()), format)
}

// runShow is 'vaultudp show': the status of running listen and proxy
// commands, asked over their control sockets.
func runShow(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("show", "[-json] [SOCKET|NAME]", stderr)
	asJSON := fs.Bool("json", false, "print JSON: an array with one object per command")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: give one socket, or none for all in %s", errUsage, runtimeDir())
	}
	var paths []string
	if fs.NArg() == 1 {
		p := fs.Arg(0)
		if !strings.Contains(p, "/") {
			p = filepath.Join(runtimeDir(), strings.TrimSuffix(p, ".sock")+".sock")
		}
		paths = []string{p}
	} else {
		found, _ := filepath.Glob(filepath.Join(runtimeDir(), "*.sock"))
		slices.Sort(found)
		paths = found
	}
	format := "text"
	if *asJSON {
		format = "json"
	}
	var (
		all    []json.RawMessage
		failed error
		shown  int
	)
	for _, p := range paths {
		b, err := askControl(p, format)
		if err != nil {
			if fs.NArg() == 1 {
				return err
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // a stale socket of a command that ended
			}
			failed = err
			continue
		}
		shown++
		if *asJSON {
			all = append(all, json.RawMessage(b))
		} else {
			if shown > 1 {
				fmt.Fprintln(stdout)
			}
			stdout.Write(b)
		}
	}
	if *asJSON {
		if all == nil {
			all = []json.RawMessage{}
		}
		b, err := json.MarshalIndent(all, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
	}
	if shown == 0 && failed == nil && !*asJSON {
		fmt.Fprintf(stderr, "no running listen or proxy found in %s\n", runtimeDir())
	}
	return failed
}

// askControl asks the control socket at path for its status.
func askControl(path, format string) ([]byte, error) {
	conn, err := net.DialTimeout("unix", path, controlTimeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(controlTimeout))
	if _, err := io.WriteString(conn, format+"\n"); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(conn, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: no answer", path)
	}
	return b, nil
}
