// Package mapper maps RBD images to block devices on the node. Three
// mappers share one interface: krbd (the kernel rbd module), rbd-nbd (a
// userspace daemon behind the nbd module) and fuse (rbd-fuse plus a loop
// device, for kernels with neither module).
package mapper

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// Image identifies one RBD image and how to reach it.
type Image struct {
	ClusterID      string
	Monitors       []string
	Pool           string
	RadosNamespace string
	Name           string
	Creds          ceph.Credentials
}

// Spec returns pool[/namespace]/name, the rbd tools' image spec.
func (i Image) Spec() string {
	if i.RadosNamespace == "" {
		return i.Pool + "/" + i.Name
	}
	return i.Pool + "/" + i.RadosNamespace + "/" + i.Name
}

// MapOptions modify one Map call.
type MapOptions struct {
	ReadOnly  bool
	Exclusive bool
	// Options are the StorageClass mapOptions for this mapper, comma
	// separated, e.g. "lock_on_read,queue_depth=1024".
	Options string
	// Admit, when set, is called once a new mapping is wanted, before
	// anything Map starts can open the image: first for krbd and rbd-nbd,
	// which open it as they map; after rbd-fuse has mounted for fuse,
	// which opens it at the first lookup of its file. An error from it
	// ends the map, what was started undone, and is returned as is. It
	// lets the caller check the image's holders while the mapper starts.
	// Map returns an existing mapping without calling it.
	Admit func(context.Context) error
	// Watchers, when set, lists the image's watchers instead of
	// Config.Watchers: the fuse mapper finds rbd-fuse's client among
	// them. The caller may hold the image open to make it one read.
	Watchers func(context.Context) ([]Watcher, error)
}

// admit calls o.Admit, if set.
func (o MapOptions) admit(ctx context.Context) error {
	if o.Admit == nil {
		return nil
	}
	return o.Admit(ctx)
}

// UnmapOptions modify one Unmap call.
type UnmapOptions struct {
	// Force unmaps even while the device is in use, for a mapping that
	// cannot write any more (dead, or fenced): in-flight I/O fails. When
	// Unmap returns, the mapping's Ceph client instance is gone.
	Force   bool
	Options string // StorageClass unmapOptions, comma separated
}

// Mapping describes one mapped image.
type Mapping struct {
	Mapper         string `json:"mapper"`
	Pool           string `json:"pool"`
	RadosNamespace string `json:"radosNamespace,omitempty"`
	Image          string `json:"image"`
	Device         string `json:"device"`
	// ClientAddr is the Ceph client instance "IP:0/NONCE" when known; it is
	// what fencing blocklists.
	ClientAddr string `json:"clientAddr,omitempty"`
	// ClientID is the client's global id, "client.4123", when known.
	ClientID string `json:"clientID,omitempty"`
}

// Watcher is one Ceph client watching an image: a mapping somewhere.
type Watcher struct {
	Addr   string // "IP:PORT/NONCE"
	Client uint64 // global ID, as in client.4123
}

// WatcherLister lists the watchers of an image.
type WatcherLister interface {
	Watchers(ctx context.Context, img Image) ([]Watcher, error)
}

// Mapper maps images to block devices.
type Mapper interface {
	// Name is "krbd", "rbd-nbd" or "fuse".
	Name() string
	// Check says whether this mapper can work on this node; its error
	// says why not.
	Check(ctx context.Context) error
	// Map maps img and returns once the device node exists. Mapping an
	// image this mapper has already mapped returns the existing mapping.
	Map(ctx context.Context, img Image, opts MapOptions) (Mapping, error)
	// Unmap unmaps m. Unmapping something no longer mapped is success.
	Unmap(ctx context.Context, m Mapping, opts UnmapOptions) error
	// List returns every image this mapper has mapped on this node.
	List(ctx context.Context) ([]Mapping, error)
	// Alive returns nil while m can carry I/O: its device is mapped and,
	// for rbd-nbd and fuse, the daemon behind it runs. Otherwise it
	// returns an error wrapping ErrMappingDead that says what is gone.
	// It never blocks on the mapping's own I/O.
	Alive(ctx context.Context, m Mapping) error
}

// Resizer is implemented by mappers whose device does not follow an image
// resize by itself; call Resize after growing the image.
type Resizer interface {
	Resize(ctx context.Context, m Mapping) error
}

var (
	// ErrUnavailable is wrapped by Check and Map when the mapper cannot work
	// on this node (missing kernel module or tool).
	ErrUnavailable = errors.New("mapper unavailable on this node")
	// ErrBusy is wrapped by Unmap when the device is still in use.
	ErrBusy = errors.New("device busy")
	// ErrUnknownMapper is returned by Registry.Get for an unknown name.
	ErrUnknownMapper = errors.New("unknown mapper")
	// ErrInvalidImage is returned by Map for an incomplete or malformed Image.
	ErrInvalidImage = errors.New("invalid image")
	// ErrUnsupportedOption is returned by Map for an option the mapper
	// cannot honour.
	ErrUnsupportedOption = errors.New("unsupported map option")
	// ErrMappingDead is wrapped by Alive when a mapping can no longer
	// carry I/O: its device or its daemon is gone. Such a mapping is
	// replaced by unmapping it with Force and mapping the image again,
	// which gives a new Ceph client instance.
	ErrMappingDead = errors.New("mapping is dead")
)

// Mapper names.
const (
	KRBD = "krbd"
	NBD  = "rbd-nbd"
	Fuse = "fuse"
)

// validate rejects images whose names could not be passed safely to the
// rbd tools: they would be read as options or as a longer image spec.
func (i Image) validate() error {
	fields := []struct{ what, value string }{
		{"pool", i.Pool}, {"image name", i.Name}, {"rados namespace", i.RadosNamespace},
	}
	for _, f := range fields {
		if f.value == "" && f.what != "rados namespace" {
			return fmt.Errorf("%w: %s is empty", ErrInvalidImage, f.what)
		}
		if strings.HasPrefix(f.value, "-") || strings.ContainsAny(f.value, "/@\x00\n") {
			return fmt.Errorf("%w: %s %q contains a character the rbd tools cannot take", ErrInvalidImage, f.what, f.value)
		}
	}
	if len(i.Monitors) == 0 {
		return fmt.Errorf("%w: no monitors for %s", ErrInvalidImage, i.Spec())
	}
	for _, m := range i.Monitors {
		if m == "" || strings.ContainsAny(m, " \t\n,") {
			return fmt.Errorf("%w: invalid monitor address %q", ErrInvalidImage, m)
		}
	}
	if i.Creds.ID == "" || i.Creds.Key == "" {
		return fmt.Errorf("%w: credentials for %s are incomplete", ErrInvalidImage, i.Spec())
	}
	return i.Creds.Validate()
}

// monHost is the monitors in -m / mon_host form.
func (i Image) monHost() string { return strings.Join(i.Monitors, ",") }

// same reports whether m maps the image img names.
func (m Mapping) same(img Image) bool {
	return m.Pool == img.Pool && m.RadosNamespace == img.RadosNamespace && m.Image == img.Name
}

// splitOptions splits a comma-separated option list, dropping blanks.
func splitOptions(s string) []string {
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// specOf returns the image spec of a mapping.
func specOf(m Mapping) string {
	return Image{Pool: m.Pool, RadosNamespace: m.RadosNamespace, Name: m.Image}.Spec()
}

// sortMappings orders mappings by device, so List is stable.
func sortMappings(ms []Mapping) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Device < ms[j].Device })
}
