package mapper

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ClassOptions are a StorageClass's mapOptions or unmapOptions, parsed
// once. ceph-csi writes them two ways: plain ("lock_on_read,queue_depth=128"),
// which are krbd's options, or per mapper ("krbd:lock_on_read;nbd:try-netlink").
// Each mapper gets only its own part.
type ClassOptions struct {
	byMapper map[string]string // canonical mapper name -> comma-separated options
	plain    bool              // krbd's part was written without a prefix
}

// ErrBadOptions is wrapped by ParseClassOptions and the checks below.
var ErrBadOptions = errors.New("invalid mapper options")

// ParseClassOptions parses either form. A part's prefix is a mapper name
// in any spelling CanonicalName accepts ("krbd", "nbd", "rbd-nbd", ...).
// An option whose value holds ':' needs the prefix, as in ceph-csi
// ("krbd:crush_location=rack:r1").
func ParseClassOptions(s string) (ClassOptions, error) {
	o := ClassOptions{byMapper: map[string]string{}}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, opts, prefixed := strings.Cut(part, ":")
		if !prefixed {
			name, opts = KRBD, part
			o.plain = true
		}
		canonical, err := CanonicalName(name)
		if err != nil || canonical == "" {
			return ClassOptions{}, fmt.Errorf("%w: %q does not name a mapper (krbd or nbd); options whose values hold ':' need one, e.g. krbd:%s",
				ErrBadOptions, strings.TrimSpace(name), part)
		}
		if _, twice := o.byMapper[canonical]; twice {
			return ClassOptions{}, fmt.Errorf("%w: options for %s are given twice", ErrBadOptions, canonical)
		}
		o.byMapper[canonical] = strings.Join(splitOptions(opts), ",")
	}
	return o, nil
}

// For returns the options of the named mapper ("" when it has none).
func (o ClassOptions) For(mapperName string) string {
	canonical, err := CanonicalName(mapperName)
	if err != nil {
		return ""
	}
	return o.byMapper[canonical]
}

// Plain reports whether krbd's options were written without a prefix.
func (o ClassOptions) Plain() bool { return o.plain }

// Mappers lists the mappers that were given options, sorted.
func (o ClassOptions) Mappers() []string {
	out := make([]string, 0, len(o.byMapper))
	for name, opts := range o.byMapper {
		if opts != "" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Options each mapper takes, by name (the part before '='). krbd's are the
// kernel rbd options of rbd(8); rbd-nbd's are rbd-nbd(8)'s map options
// less the encryption ones (Pelagic does not encrypt volumes); rbd-nbd
// unmap takes none, and fuse takes none at all.
var (
	krbdMapOptions = nameSet("fsid", "ip", "share", "noshare", "crc", "nocrc", "cephx_require_signatures",
		"nocephx_require_signatures", "tcp_nodelay", "notcp_nodelay", "cephx_sign_messages",
		"nocephx_sign_messages", "mount_timeout", "osdkeepalive", "osd_idle_ttl", "rw", "ro",
		"queue_depth", "lock_on_read", "exclusive", "lock_timeout", "notrim", "abort_on_full",
		"alloc_size", "crush_location", "read_from_replica", "compression_hint", "ms_mode", "rxbounce",
		"udev", "noudev")
	krbdUnmapOptions = nameSet("force", "udev", "noudev")
	nbdMapOptions    = nameSet("device", "exclusive", "io-timeout", "max_part", "nbds_max", "quiesce",
		"quiesce-hook", "read-only", "reattach-timeout", "try-netlink", "show-cookie", "cookie")
)

func nameSet(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// CheckMapOptions says whether the named mapper accepts options (comma
// separated) at map time, so that a class is refused before any volume
// of it exists rather than at every stage.
func CheckMapOptions(mapperName, options string) error {
	return checkOptions(mapperName, "map", options, map[string]map[string]bool{KRBD: krbdMapOptions, NBD: nbdMapOptions})
}

// CheckUnmapOptions is CheckMapOptions for unmap.
func CheckUnmapOptions(mapperName, options string) error {
	return checkOptions(mapperName, "unmap", options, map[string]map[string]bool{KRBD: krbdUnmapOptions})
}

func checkOptions(mapperName, verb, options string, known map[string]map[string]bool) error {
	canonical, err := CanonicalName(mapperName)
	if err != nil {
		return err
	}
	for _, o := range splitOptions(options) {
		name, _, _ := strings.Cut(strings.TrimLeft(o, "-"), "=")
		if !known[canonical][name] {
			if len(known[canonical]) == 0 {
				return fmt.Errorf("%w: %s takes no %s options, got %q", ErrBadOptions, canonical, verb, o)
			}
			return fmt.Errorf("%w: %s has no %s option %q (it takes %s)", ErrBadOptions, canonical, verb, name,
				strings.Join(sortedNames(known[canonical]), ", "))
		}
	}
	return nil
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// krbdFeatures are the image features the rbd driver of Linux 6.1 maps
// (RBD_FEATURES_SUPPORTED: layering, striping, exclusive-lock, object-map,
// fast-diff, deep-flatten, data-pool, operations). It has no journaling.
// rbd-nbd and rbd-fuse use librbd, which maps every feature.
var krbdFeatures = nameSet("layering", "striping", "exclusive-lock", "object-map", "fast-diff",
	"deep-flatten", "data-pool", "operations")

// UnmappableFeatures returns the features (by librbd name) the named mapper
// cannot map, in the order given.
func UnmappableFeatures(mapperName string, features []string) []string {
	if canonical, _ := CanonicalName(mapperName); canonical != KRBD {
		return nil
	}
	var out []string
	for _, f := range features {
		if !krbdFeatures[f] {
			out = append(out, f)
		}
	}
	return out
}
