package ceph

import (
	"net"
	"strings"
)

// Ceph spells an address "IP:PORT/NONCE" (a client instance's port is 0),
// with or without its messenger type ("v1:", "v2:", "any:"), and the
// addresses of one entity as an addrvec, "[v2:IP:PORT/NONCE,v1:IP:PORT/NONCE]".
// Blocklists and `rbd status` print the plain form, librbd and sysfs
// sometimes the typed one: compare addresses only through these helpers.

// AddrVec returns the addresses of an addrvec as spelled; a single
// address is a vector of one. "[fd00::1]:6789", an IPv6 host and port,
// is not a vector.
func AddrVec(s string) []string {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") && addrType(s[1:]) != "" {
		s = s[1 : len(s)-1]
	}
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// PlainAddr drops the messenger type of one address.
func PlainAddr(a string) string { return strings.TrimPrefix(a, addrType(a)) }

// PlainAddrs returns the addresses of an addrvec (or of one address) in
// plain form.
func PlainAddrs(s string) []string {
	var out []string
	for _, a := range AddrVec(s) {
		if a = PlainAddr(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// SameClient reports whether two client instance addresses name the same
// client, whatever messenger type either carries.
func SameClient(a, b string) bool { return a != "" && PlainAddr(a) == PlainAddr(b) }

// MonTCPAddr turns a monitor address in any spelling ("v2:1.2.3.4:3300/0",
// "[v2:...,v1:...]", "host", "fd00::1") into host:port for a plain TCP
// dial: the first address of a vector, port 6789 when none is given.
func MonTCPAddr(mon string) string {
	if vec := AddrVec(mon); len(vec) > 0 {
		mon = PlainAddr(vec[0])
	}
	if i := strings.LastIndex(mon, "/"); i >= 0 {
		mon = mon[:i]
	}
	if _, _, err := net.SplitHostPort(mon); err != nil {
		return net.JoinHostPort(strings.Trim(mon, "[]"), "6789")
	}
	return mon
}

func addrType(a string) string {
	for _, t := range []string{"v1:", "v2:", "any:"} {
		if strings.HasPrefix(a, t) {
			return t
		}
	}
	return ""
}
