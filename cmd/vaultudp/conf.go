package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/vaultudp/vaultudp"
)

// The configuration file has the shape of wg-quick's: an [Interface]
// section with the command's own settings and one [Peer] section per
// peer. The subset is small (sections, "Key = Value", '#' comments), so
// it is parsed here rather than with an INI library: one that accepts
// more (quoting, continuation lines, duplicate keys merged) would accept
// files wg-quick refuses.
//
//	[Interface]
//	ListenAddress = 0.0.0.0:11000        # listen: ADDR; proxy: -listen
//	PrivateKeyFile = /etc/vaultudp/server.key   # or PrivateKey = KEY (then the file must be 0600)
//	Policy = require-encryption
//	Forward = 127.0.0.1:5353             # proxy, server side
//	# also: AllowAny, AllowPlaintext, To, KnownHosts, Control, Status,
//	# StatusFormat, Timeout, MaxFlows, FlowIdle (the flags' names)
//
//	[Peer]
//	PublicKey = KEY                      # accepted (-allow KEY)
//
//	[Peer]
//	PublicKey = KEY
//	Endpoint = 192.0.2.7:11000           # pinned at its address and contacted (-peer ADDR=KEY)

// confKeys maps the [Interface] keys to the flags they set; a key whose
// flag the command lacks is an error.
var confKeys = map[string]string{
	"listenaddress":  "", // -bind for listen and send, -listen for proxy
	"privatekeyfile": "key",
	"policy":         "policy",
	"allowany":       "allow-any",
	"allowplaintext": "allow-plaintext",
	"forward":        "forward",
	"to":             "to",
	"knownhosts":     "known-hosts",
	"control":        "control",
	"status":         "status",
	"statusformat":   "status-format",
	"timeout":        "timeout",
	"maxflows":       "max-flows",
	"flowidle":       "flow-idle",
}

// confSpelling is how printConfig writes each key.
var confSpelling = map[string]string{
	"listenaddress": "ListenAddress", "privatekeyfile": "PrivateKeyFile", "policy": "Policy",
	"allowany": "AllowAny", "allowplaintext": "AllowPlaintext", "forward": "Forward", "to": "To",
	"knownhosts": "KnownHosts", "control": "Control", "status": "Status", "statusformat": "StatusFormat",
	"timeout": "Timeout", "maxflows": "MaxFlows", "flowidle": "FlowIdle",
}

// loadConfig applies -config: each [Interface] setting sets its flag
// unless the command line gave that flag; [Peer] sections add to -allow
// (a key alone) or -peer (a key and an Endpoint). A bad file is a usage
// error naming the line.
func (pf *peerFlags) loadConfig(fs *flag.FlagSet, command string) error {
	path := *pf.confFile
	if path == "" {
		return nil
	}
	pf.confPath = path
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: -config: %v", errUsage, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	bad := func(line int, format string, a ...any) error {
		return fmt.Errorf("%w: %s:%d: %s", errUsage, path, line, fmt.Sprintf(format, a...))
	}
	type peerSec struct {
		line          int
		key, endpoint string
	}
	var (
		section string
		peers   []*peerSec
		seen    = map[string]int{}
	)
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		text, _, _ := strings.Cut(sc.Text(), "#")
		if text = strings.TrimSpace(text); text == "" {
			continue
		}
		if strings.HasPrefix(text, "[") {
			switch strings.ToLower(text) {
			case "[interface]":
				if seen["[interface]"] > 0 {
					return bad(n, "a second [Interface] section (the first is at line %d)", seen["[interface]"])
				}
				seen["[interface]"] = n
				section = "interface"
			case "[peer]":
				section = "peer"
				peers = append(peers, &peerSec{line: n})
			default:
				return bad(n, "unknown section %s (want [Interface] or [Peer])", text)
			}
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return bad(n, "want Key = Value")
		}
		key, value := strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		switch section {
		case "":
			return bad(n, "%s outside a section: start with [Interface]", strings.TrimSpace(k))
		case "peer":
			p := peers[len(peers)-1]
			switch key {
			case "publickey":
				if p.key != "" {
					return bad(n, "a second PublicKey in this [Peer]")
				}
				if _, err := vaultudp.ParsePublicKey(value); err != nil {
					return bad(n, "PublicKey: %v", err)
				}
				p.key = value
			case "endpoint":
				p.endpoint = value
			default:
				return bad(n, "unknown [Peer] key %s (want PublicKey or Endpoint)", strings.TrimSpace(k))
			}
			continue
		}
		if prev := seen[key]; prev > 0 {
			return bad(n, "%s is given twice (first at line %d)", strings.TrimSpace(k), prev)
		}
		seen[key] = n
		if key == "privatekey" {
			if perm := fi.Mode().Perm(); perm&0o077 != 0 {
				return fmt.Errorf("%s:%d: PrivateKey in a file of mode %04o: group and others must have no access (chmod 600 %s), or name a key file with PrivateKeyFile", path, n, perm, path)
			}
			k, err := vaultudp.ParsePrivateKey(value)
			if err != nil {
				return bad(n, "PrivateKey: %v", err)
			}
			if !given["key"] {
				pf.inlineKey = k
			}
			continue
		}
		name, known := confKeys[key]
		if !known {
			return bad(n, "unknown [Interface] key %s", strings.TrimSpace(k))
		}
		if key == "listenaddress" {
			name = "bind"
			if command == "proxy" {
				name = "listen"
			}
		}
		if fs.Lookup(name) == nil {
			return bad(n, "%s does not apply to 'vaultudp %s'", strings.TrimSpace(k), command)
		}
		if given[name] {
			continue // the command line wins
		}
		if err := fs.Set(name, value); err != nil {
			return bad(n, "%s: %v", strings.TrimSpace(k), err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range peers {
		if p.key == "" {
			return bad(p.line, "[Peer] without PublicKey")
		}
		if p.endpoint != "" {
			pf.peers = append(pf.peers, p.endpoint+"="+p.key)
			continue
		}
		if pf.trust == nil {
			return bad(p.line, "a [Peer] without Endpoint is a key to accept: 'vaultudp %s' accepts none (give the server's Endpoint to pin it)", command)
		}
		if err := fs.Set("allow", p.key); err != nil {
			return bad(p.line, "PublicKey: %v", err)
		}
	}
	return nil
}

// printConfig writes the configuration file the flags describe, so that
// "-print-config > FILE" then "-config FILE" runs the same command. extra
// are [Interface] settings the caller resolved (the listening address).
func (pf *peerFlags) printConfig(w io.Writer, command string, extra map[string]string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# vaultudp %s -config FILE\n[Interface]\n", command)
	set := func(key, value string) {
		if value != "" {
			fmt.Fprintf(&b, "%s = %s\n", confSpelling[key], value)
		}
	}
	if a := extra["ListenAddress"]; a != "" {
		set("listenaddress", a)
	} else if pf.bind != nil && *pf.bind != "0.0.0.0:0" {
		set("listenaddress", *pf.bind)
	}
	for _, k := range []string{"to", "forward", "maxflows", "flowidle"} {
		set(k, extra[confSpelling[k]])
	}
	if pf.inlineKey != nil {
		fmt.Fprintf(&b, "PrivateKey = %s\n", vaultudp.EncodePrivateKey(pf.inlineKey))
	}
	set("privatekeyfile", *pf.key)
	if *pf.policy != "require-encryption" {
		set("policy", *pf.policy)
	}
	if pf.trust != nil {
		if *pf.trust.any {
			set("allowany", "true")
		}
		if *pf.trust.plaintext {
			set("allowplaintext", "true")
		}
		if *pf.control != "" {
			set("control", *pf.control)
		}
		if *pf.status > 0 {
			set("status", pf.status.String())
		}
		if *pf.statusFormat != "text" {
			set("statusformat", *pf.statusFormat)
		}
	}
	if pf.knownHosts != nil {
		set("knownhosts", *pf.knownHosts)
	}
	if pf.trust != nil {
		for _, k := range pf.trust.list.Keys() {
			fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\n", vaultudp.EncodePublicKey(k))
		}
	}
	for _, p := range pf.peers {
		addr, key, pinned := strings.Cut(p, "=")
		if !pinned {
			// An address without a key is contacted, not trusted: the
			// file format has no such peer.
			return fmt.Errorf("%w: -peer %s has no key: a configuration file's [Peer] needs a PublicKey", errUsage, strconv.Quote(p))
		}
		fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nEndpoint = %s\n", key, addr)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
