package mapper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// krbd maps images with the kernel rbd module, through `rbd device map`.
// It reads what is mapped from sysfs, never from the rbd tool's output.
type krbd struct {
	cfg      Config
	readFile func(string) ([]byte, error) // os.ReadFile; sysfs reads
}

func newKRBD(cfg Config) *krbd { return &krbd{cfg: cfg, readFile: os.ReadFile} }

func (k *krbd) Name() string { return KRBD }

func (k *krbd) Check(ctx context.Context) error {
	if err := moduleLoaded(ctx, k.cfg, "rbd", KRBD); err != nil {
		return err
	}
	return toolRuns(ctx, k.cfg, k.cfg.RBDBinary, KRBD)
}

func (k *krbd) Map(ctx context.Context, img Image, opts MapOptions) (Mapping, error) {
	if err := img.validate(); err != nil {
		return Mapping{}, err
	}
	// The module only: a missing rbd tool shows when it is run.
	if err := moduleLoaded(ctx, k.cfg, "rbd", KRBD); err != nil {
		return Mapping{}, err
	}
	before, err := k.devices()
	if err != nil {
		return Mapping{}, err
	}
	for _, d := range before {
		if d.mapping.same(img) {
			return d.mapping, nil
		}
	}
	if err := opts.admit(ctx); err != nil {
		return Mapping{}, err
	}

	keyfile, removeKey, err := writeKeyfile(k.cfg.StateDir, img.Creds)
	if err != nil {
		return Mapping{}, err
	}
	defer removeKey()
	if _, err := k.cfg.Runner.Run(ctx, k.cfg.RBDBinary, k.mapArgs(img, opts, keyfile)...); err != nil {
		return Mapping{}, fmt.Errorf("mapping %s with krbd as %s: %w", img.Spec(), img.Creds, mapFailure(err, KRBD))
	}

	after, err := k.devices()
	if err != nil {
		return Mapping{}, err
	}
	// No device mapped img before (see above), so the one that does now is
	// the new one, whatever its id: the kernel reuses the id of a device
	// unmapped meanwhile.
	for _, d := range after {
		if d.mapping.same(img) {
			if err := waitForDevice(ctx, k.cfg.DeviceTimeout, d.mapping.Device); err != nil {
				return Mapping{}, err
			}
			return d.mapping, nil
		}
	}
	return Mapping{}, fmt.Errorf("mapping %s with krbd: rbd succeeded but no new device for it appeared in %s",
		img.Spec(), k.devicesDir())
}

// mapArgs always asks for noshare: without it the kernel shares one Ceph
// client instance among every image mapped from the same cluster with the
// same user and options, and a fence of one mapping's instance would cut
// every other volume of the node, current ones included.
func (k *krbd) mapArgs(img Image, opts MapOptions, keyfile string) []string {
	args := []string{"device", "map", "--device-type", "krbd",
		"--id", img.Creds.ID, "--keyfile", keyfile, "-m", img.monHost(),
		"--pool", img.Pool}
	if img.RadosNamespace != "" {
		args = append(args, "--namespace", img.RadosNamespace)
	}
	args = append(args, "--image", img.Name)
	if opts.ReadOnly {
		args = append(args, "--read-only")
	}
	options := []string{"noshare"}
	if opts.Exclusive {
		options = append(options, "exclusive")
	}
	for _, o := range splitOptions(opts.Options) {
		if o != "noshare" && o != "share" {
			options = append(options, o)
		}
	}
	return append(append(args, "-o", strings.Join(options, ",")), noConfig()...)
}

// withOptions appends "-o" with the user's options, plus flagName when flag is set.
func withOptions(args []string, user string, flag bool, flagName string) []string {
	var options []string
	if flag {
		options = append(options, flagName)
	}
	options = append(options, splitOptions(user)...)
	if len(options) > 0 {
		args = append(args, "-o", strings.Join(options, ","))
	}
	return args
}

func (k *krbd) Unmap(ctx context.Context, m Mapping, opts UnmapOptions) error {
	dev, found, err := k.find(m)
	if err != nil || !found {
		return err
	}
	args := withOptions([]string{"device", "unmap", "--device-type", "krbd"}, opts.Options, opts.Force, "force")
	args = append(args, noConfig()...)
	args = append(args, dev.mapping.Device)

	out, err := k.cfg.Runner.Run(ctx, k.cfg.RBDBinary, args...)
	if err == nil {
		return nil
	}
	if _, still, ferr := k.find(m); ferr == nil && !still {
		return nil // gone anyway, e.g. unmapped concurrently
	}
	if isBusy(err, out) {
		return busyError(ctx, k.cfg.Mounts, dev.mapping.Device, err)
	}
	return fmt.Errorf("unmapping %s (%s): %w", dev.mapping.Device, specOf(dev.mapping), err)
}

// find returns the mapped device m describes: by device when m names one,
// otherwise by image.
func (k *krbd) find(m Mapping) (krbdDevice, bool, error) {
	devs, err := k.devices()
	if err != nil {
		return krbdDevice{}, false, err
	}
	for _, d := range devs {
		byDevice := m.Device != "" && d.mapping.Device == m.Device
		byImage := m.Device == "" && d.mapping.Pool == m.Pool &&
			d.mapping.RadosNamespace == m.RadosNamespace && d.mapping.Image == m.Image
		if byDevice || byImage {
			return d, true, nil
		}
	}
	return krbdDevice{}, false, nil
}

// Alive implements Mapper. A krbd mapping has no daemon: the kernel client
// lives as long as the device is mapped.
func (k *krbd) Alive(_ context.Context, m Mapping) error {
	_, found, err := k.find(m)
	if err != nil || found {
		return err
	}
	return fmt.Errorf("%w: %s (%s) is no longer mapped by krbd", ErrMappingDead, m.Device, specOf(m))
}

func (k *krbd) List(context.Context) ([]Mapping, error) {
	devs, err := k.devices()
	if err != nil {
		return nil, err
	}
	out := make([]Mapping, 0, len(devs))
	for _, d := range devs {
		out = append(out, d.mapping)
	}
	sortMappings(out)
	return out, nil
}

// krbdDevice is one /sys/bus/rbd/devices/ID entry.
type krbdDevice struct {
	id      string
	mapping Mapping
}

func (k *krbd) devicesDir() string { return filepath.Join(k.cfg.SysfsRoot, "bus", "rbd", "devices") }

// devices reads every mapped image from sysfs, by device id. Snapshot
// mappings are left out: the driver never maps snapshots, and they must
// not be mistaken for their image.
func (k *krbd) devices() (map[string]krbdDevice, error) {
	entries, err := os.ReadDir(k.devicesDir())
	if errors.Is(err, os.ErrNotExist) {
		return map[string]krbdDevice{}, nil // module not loaded: nothing mapped
	}
	if err != nil {
		return nil, fmt.Errorf("listing krbd devices: %w", err)
	}
	devs := make(map[string]krbdDevice, len(entries))
	for _, e := range entries {
		d, err := k.readDevice(e.Name())
		if unmappedMeanwhile(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if d.id != "" {
			devs[d.id] = d
		}
	}
	return devs, nil
}

func (k *krbd) readDevice(id string) (krbdDevice, error) {
	dir := filepath.Join(k.devicesDir(), id)
	attr := func(name string) (string, error) {
		b, err := k.readFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b)), err
	}
	// Older kernels lack pool_ns and client_addr; "" then.
	optional := func(name string) string {
		v, _ := attr(name)
		return v
	}
	pool, err := attr("pool")
	if err != nil {
		return krbdDevice{}, fmt.Errorf("reading krbd device %s: %w", id, err)
	}
	image, err := attr("name")
	if err != nil {
		return krbdDevice{}, fmt.Errorf("reading krbd device %s: %w", id, err)
	}
	if snap := optional("current_snap"); snap != "" && snap != "-" {
		return krbdDevice{}, nil
	}
	return krbdDevice{id: id, mapping: Mapping{
		Mapper:         KRBD,
		Pool:           pool,
		RadosNamespace: optional("pool_ns"),
		Image:          image,
		Device:         filepath.Join(k.cfg.DevRoot, "rbd"+id),
		ClientAddr:     optional("client_addr"),
		ClientID:       clientName(optional("client_id")),
	}}, nil
}

// unmappedMeanwhile tells whether err is a read of a device that another
// unmap removed while we read it: its directory gone (ENOENT), or its
// attributes already torn down (ENODEV, as the kernel answers during the
// removal).
func unmappedMeanwhile(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}

// clientName spells the kernel's client_id ("client4126") as Ceph's
// tools and watch lists do ("client.4126").
func clientName(id string) string {
	if n, ok := strings.CutPrefix(id, "client"); ok && n != "" && !strings.HasPrefix(n, ".") {
		return "client." + n
	}
	return id
}
