package mapper

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// nbd maps images with rbd-nbd, a userspace librbd daemon behind the
// kernel nbd module. It learns what is mapped from `rbd-nbd list-mapped
// --format json`. It does not know the client address of its daemons.
type nbd struct {
	cfg Config
}

func newNBD(cfg Config) *nbd { return &nbd{cfg: cfg} }

func (n *nbd) Name() string { return NBD }

func (n *nbd) Check(ctx context.Context) error {
	if err := moduleLoaded(ctx, n.cfg, "nbd", NBD); err != nil {
		return err
	}
	return toolRuns(ctx, n.cfg, n.cfg.NBDBinary, NBD)
}

func (n *nbd) Map(ctx context.Context, img Image, opts MapOptions) (Mapping, error) {
	if err := img.validate(); err != nil {
		return Mapping{}, err
	}
	if err := moduleLoaded(ctx, n.cfg, "nbd", NBD); err != nil {
		return Mapping{}, err
	}
	before, err := n.List(ctx)
	if err != nil {
		return Mapping{}, err
	}
	for _, m := range before {
		if m.same(img) {
			return m, nil
		}
	}
	if err := opts.admit(ctx); err != nil {
		return Mapping{}, err
	}

	keyfile, removeKey, err := writeKeyfile(n.cfg.StateDir, img.Creds)
	if err != nil {
		return Mapping{}, err
	}
	// rbd-nbd reads the key before it returns; its daemon keeps it in memory.
	defer removeKey()
	// The daemon rbd-nbd leaves behind must outlive this process.
	if _, err := n.cfg.Daemons.Run(ctx, n.cfg.NBDBinary, n.mapArgs(img, opts, keyfile)...); err != nil {
		return Mapping{}, fmt.Errorf("mapping %s with rbd-nbd as %s: %w", img.Spec(), img.Creds, mapFailure(err, NBD))
	}

	// rbd-nbd returns before its daemon has connected the device (the
	// connect blocks in the daemon), and list-mapped shows a device only
	// once it is connected: wait for it. No device mapped img before (see
	// above), so the one that does now is the new one, even on the device
	// of a mapping removed meanwhile.
	var mapped Mapping
	err = util.WaitFor(ctx, n.cfg.DeviceTimeout, "rbd-nbd to connect "+img.Spec(), func() (bool, error) {
		after, err := n.List(ctx)
		for _, m := range after {
			if m.same(img) {
				mapped = m
				return true, nil
			}
		}
		return false, err
	})
	if err != nil {
		return Mapping{}, fmt.Errorf("mapping %s with rbd-nbd: it succeeded but list-mapped does not show the image: %w", img.Spec(), err)
	}
	if err := waitForDevice(ctx, n.cfg.DeviceTimeout, mapped.Device); err != nil {
		return Mapping{}, err
	}
	return mapped, nil
}

func (n *nbd) mapArgs(img Image, opts MapOptions, keyfile string) []string {
	args := append([]string{"map"}, noConfig()...)
	args = append(args, "--id", img.Creds.ID, "--keyfile", keyfile, "-m", img.monHost())
	if opts.ReadOnly {
		args = append(args, "--read-only")
	}
	if opts.Exclusive {
		args = append(args, "--exclusive")
	}
	args = append(args, nbdFlags(withNetlink(opts.Options))...)
	return append(args, img.Spec())
}

// withNetlink adds try-netlink to a StorageClass's options, as ceph-csi
// does: through the legacy ioctls, rbd-nbd picks a free device before it
// claims it, so two maps at once can pick the same one and the second
// daemon dies after its map has reported success. Netlink lets the kernel
// pick the device.
func withNetlink(options string) string {
	for _, o := range splitOptions(options) {
		if strings.TrimLeft(o, "-") == "try-netlink" {
			return options
		}
	}
	if options == "" {
		return "try-netlink"
	}
	return "try-netlink," + options
}

// nbdFlags turns StorageClass options ("try-netlink,io-timeout=30") into
// rbd-nbd flags ("--try-netlink", "--io-timeout=30").
func nbdFlags(options string) []string {
	var flags []string
	for _, o := range splitOptions(options) {
		flags = append(flags, "--"+strings.TrimLeft(o, "-"))
	}
	return flags
}

// Unmap implements Mapper. rbd-nbd disconnects a device even while it is
// mounted, and the kernel then fails that mount's I/O: so Unmap refuses,
// as krbd does, while something holds the device, unless opts.Force.
func (n *nbd) Unmap(ctx context.Context, m Mapping, opts UnmapOptions) error {
	current, found, err := n.find(ctx, m)
	if err != nil || !found {
		return err
	}
	if !opts.Force {
		holders, err := n.cfg.Mounts.Holders(ctx, current.Device)
		if err != nil {
			return fmt.Errorf("unmapping %s: finding what holds it: %w", current.Device, err)
		}
		if len(holders) > 0 {
			return fmt.Errorf("%w: %s is in use by %s", ErrBusy, current.Device, strings.Join(holders, ", "))
		}
	}
	args := append(append([]string{"unmap"}, noConfig()...), nbdFlags(opts.Options)...)
	args = append(args, current.Device)
	out, err := n.cfg.Runner.Run(ctx, n.cfg.NBDBinary, args...)
	if err == nil {
		return nil
	}
	if _, still, ferr := n.find(ctx, m); ferr == nil && !still {
		return nil
	}
	if isBusy(err, out) {
		return busyError(ctx, n.cfg.Mounts, current.Device, err)
	}
	return fmt.Errorf("unmapping %s (%s): %w", current.Device, specOf(current), err)
}

// Alive implements Mapper: list-mapped shows only the devices an rbd-nbd
// process still serves.
func (n *nbd) Alive(ctx context.Context, m Mapping) error {
	_, found, err := n.find(ctx, m)
	if err != nil || found {
		return err
	}
	return fmt.Errorf("%w: no rbd-nbd process serves %s (%s) any more", ErrMappingDead, m.Device, specOf(m))
}

func (n *nbd) find(ctx context.Context, m Mapping) (Mapping, bool, error) {
	all, err := n.List(ctx)
	if err != nil {
		return Mapping{}, false, err
	}
	for _, c := range all {
		byDevice := m.Device != "" && c.Device == m.Device
		byImage := m.Device == "" && c.Pool == m.Pool && c.RadosNamespace == m.RadosNamespace && c.Image == m.Image
		if byDevice || byImage {
			return c, true, nil
		}
	}
	return Mapping{}, false, nil
}

// nbdListEntry is one device in `rbd-nbd list-mapped --format json`.
type nbdListEntry struct {
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Image     string `json:"image"`
	Snap      string `json:"snap"`
	Device    string `json:"device"`
}

func (n *nbd) List(ctx context.Context) ([]Mapping, error) {
	out, err := n.cfg.Runner.Run(ctx, n.cfg.NBDBinary, append([]string{"list-mapped", "--format", "json"}, noConfig()...)...)
	if err != nil {
		return nil, fmt.Errorf("listing rbd-nbd devices: %w", unavailableIfMissing(err, NBD))
	}
	var entries []nbdListEntry
	if err := decodeJSON(out, &entries); err != nil {
		return nil, fmt.Errorf("listing rbd-nbd devices: unexpected output: %w", err)
	}
	var ms []Mapping
	for _, e := range entries {
		if e.Snap != "" && e.Snap != "-" {
			continue // the driver never maps snapshots
		}
		ms = append(ms, Mapping{Mapper: NBD, Pool: e.Pool, RadosNamespace: e.Namespace, Image: e.Image, Device: e.Device})
	}
	sortMappings(ms)
	return ms, nil
}

// decodeJSON decodes the JSON document in a command's output. The runner
// merges stderr into the output, so warnings may come before or after it:
// the document starts on the first line that starts with [ or {.
func decodeJSON(out []byte, v any) error {
	start := 0
	for _, line := range bytes.SplitAfter(out, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && (t[0] == '[' || t[0] == '{') {
			return json.NewDecoder(bytes.NewReader(out[start:])).Decode(v)
		}
		start += len(line)
	}
	return fmt.Errorf("no JSON in %q", truncate(string(out), 200))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
