// Command vaultudp tries, uses and measures vaultudp without writing Go.
//
//	vaultudp demo                     two Conns on loopback, a handshake, datagrams both ways
//	vaultudp keygen [-o FILE]         a private identity key: to FILE (mode 0600), or to stdout
//	vaultudp pubkey [FILE|-]          print the public key of a key file, or of a key on stdin
//	vaultudp listen [flags] ADDR      receive datagrams on ADDR and print them
//	vaultudp send [flags] ADDR        send each line of stdin to ADDR as a datagram
//	vaultudp proxy -listen A -to B    client side of an encrypting UDP proxy
//	vaultudp proxy -listen A -forward S  server side: opened datagrams go to service S
//	vaultudp show [-json] [NAME]      the status of running listen and proxy commands
//	vaultudp bench                    raw UDP beside vaultudp on loopback
//	vaultudp version                  the version of the command
//
// Run "vaultudp COMMAND -h" for the flags of a command. Exit status: 0 on
// success (and after SIGINT or SIGTERM stops listen or proxy), 1 on error,
// 2 on a usage error. The flag package is enough for a handful of
// subcommands and adds no dependency.
//
// listen and proxy keep one identity across restarts: -key FILE, or
// vaultudp/identity.key in the user's configuration directory, created
// with mode 0600 on first use. They deny by default, as WireGuard: they
// accept the keys of -allow KEY and -allow-file PATH (or a -config file's
// [Peer] sections), peers pinned with -peer ADDR=KEY, or, with -allow-any
// only, any signed key (trust on first use). send and proxy -to trust the
// server's key pinned with -peer ADDR=KEY (-remote-key), else the one its
// known hosts file remembers, where the first contact writes it, as ssh.
// Addresses may be host names: they are resolved, IPv4 first unless the
// local socket is IPv6.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

type command struct {
	name, args, summary string
	run                 func(args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"demo", "", "two Conns on loopback: handshake, datagrams both ways, stats", runDemo},
	{"keygen", "[-o FILE]", "a private identity key: to FILE (mode 0600) printing its public key, or to stdout", runKeygen},
	{"pubkey", "[FILE|-]", "print the public key of a private key file (no FILE or -: read the key from stdin)", runPubkey},
	{"listen", "[flags] ADDR", "receive datagrams on ADDR and print them, one per line", runListen},
	{"send", "[flags] ADDR", "send each line of stdin to ADDR as one datagram", runSend},
	{"proxy", "-listen A -to B", "encrypt an unchanged UDP program: plain in, sealed between proxies, plain out", runProxy},
	{"show", "[-json] [NAME]", "the peers and counters of running listen and proxy commands (as wg show)", runShow},
	{"bench", "[flags]", "raw UDP beside vaultudp on loopback: packets/s, MB/s, ratio", runBench},
	{"version", "", "the command's version, and the Go that built it", runVersion},
}

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-version" || args[0] == "--version") {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		switch {
		case err == nil || errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "vaultudp %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(stderr, "vaultudp %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "vaultudp: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "vaultudp: encrypted UDP, as a drop-in net.PacketConn.\n\nUsage:")
	for _, c := range commands {
		fmt.Fprintf(w, "  vaultudp %-7s %-15s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'vaultudp COMMAND -h' for a command's flags.")
}

// newFlags returns a FlagSet whose help goes to stderr.
func newFlags(name, args string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vaultudp %s %s\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and wraps a bad command line in errUsage. The flag
// package's own report of a bad flag is silenced: run prints the returned
// error, so it appears once. Help (-h) prints the usage.
func parse(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return err
		}
		return fmt.Errorf("%w: %v (run 'vaultudp %s -h' for the flags)", errUsage, err, fs.Name())
	}
	return nil
}

// runVersion prints the module's version (or "(devel)"), the VCS
// revision it was built from when known, and the Go version.
func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		_, err := fmt.Fprintf(stdout, "vaultudp (unknown version) %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return err
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision":
			v += " " + s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			v += " (modified)"
		}
	}
	_, err := fmt.Fprintf(stdout, "vaultudp %s %s %s/%s\n", v, bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	return err
}
