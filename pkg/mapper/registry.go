package mapper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Mounts is the part of mount.Mounter the mappers need: to name what holds
// a busy device and to take down rbd-fuse mounts.
type Mounts interface {
	IsMountPoint(ctx context.Context, path string) (bool, error)
	Unmount(ctx context.Context, target string) error
	Detach(ctx context.Context, target string) error
	Holders(ctx context.Context, device string) ([]string, error)
}

// Config builds the mappers. Zero fields take the defaults.
type Config struct {
	Runner util.Runner // required; runs every command
	// Daemons runs the commands that leave a daemon behind (rbd-fuse, and
	// rbd-nbd map), so that the daemon can run where a restart of this
	// process cannot reach it (see package daemonhost). Default Runner.
	Daemons util.Runner
	Mounts  Mounts // default: a mount.HostMounter over Runner

	// StateDir holds the fuse mapper's per-mapping directories (under
	// StateDir/fuse) and short-lived keyfiles (under StateDir/keys). It
	// must survive driver restarts and be short: admin socket paths inside
	// it are limited to 107 bytes.
	StateDir  string
	SysfsRoot string // default /sys
	DevRoot   string // default /dev
	ProcRoot  string // default /proc

	// Default is the mapper Get("") returns; default krbd.
	Default string

	RBDBinary      string // default rbd
	NBDBinary      string // default rbd-nbd
	FuseBinary     string // default rbd-fuse
	LosetupBinary  string // default losetup
	ModprobeBinary string // default modprobe

	// Watchers lists an image's watchers, among which the fuse mapper
	// finds its rbd-fuse's client, over a connection the caller already
	// has. Default: `rbd status`, a Ceph client process of its own.
	Watchers WatcherLister

	// FuseNetNS, when set (e.g. /run/netns/NAME), runs rbd-fuse in that
	// network namespace, so its Ceph traffic leaves from that namespace's
	// address: a node whose storage network lives in a namespace, or a
	// test's second node.
	FuseNetNS string

	DeviceTimeout    time.Duration // Map waiting for the device node; default 10s
	FuseStartTimeout time.Duration // rbd-fuse connecting and serving the image; default 30s
	FuseExitTimeout  time.Duration // rbd-fuse exiting after its unmount; default 10s
}

func (c Config) withDefaults() (Config, error) {
	if c.Runner == nil {
		return c, errors.New("mapper config: Runner is required")
	}
	set := func(field *string, def string) {
		if *field == "" {
			*field = def
		}
	}
	set(&c.SysfsRoot, "/sys")
	set(&c.DevRoot, "/dev")
	set(&c.ProcRoot, "/proc")
	set(&c.Default, KRBD)
	set(&c.RBDBinary, "rbd")
	set(&c.NBDBinary, "rbd-nbd")
	set(&c.FuseBinary, "rbd-fuse")
	set(&c.LosetupBinary, "losetup")
	set(&c.ModprobeBinary, "modprobe")
	setDuration := func(field *time.Duration, def time.Duration) {
		if *field <= 0 {
			*field = def
		}
	}
	setDuration(&c.DeviceTimeout, 10*time.Second)
	setDuration(&c.FuseStartTimeout, 30*time.Second)
	setDuration(&c.FuseExitTimeout, 10*time.Second)
	if c.StateDir != "" {
		// rbd-fuse changes to / when it daemonizes: every path it gets must be absolute.
		abs, err := filepath.Abs(c.StateDir)
		if err != nil {
			return c, fmt.Errorf("mapper config: state directory: %w", err)
		}
		c.StateDir = abs
	}
	if c.Mounts == nil {
		c.Mounts = mount.NewHostMounter(mount.Config{Runner: c.Runner, SysfsRoot: c.SysfsRoot})
	}
	if c.Daemons == nil {
		c.Daemons = c.Runner
	}
	return c, nil
}

// Registry holds one mapper of each kind.
type Registry struct {
	defaultName string
	mappers     map[string]Mapper
}

// NewRegistry builds the krbd, rbd-nbd and fuse mappers from cfg.
func NewRegistry(cfg Config) (*Registry, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	def, err := CanonicalName(cfg.Default)
	if err != nil {
		return nil, fmt.Errorf("mapper config: default: %w", err)
	}
	return &Registry{
		defaultName: def,
		mappers: map[string]Mapper{
			KRBD: newKRBD(cfg),
			NBD:  newNBD(cfg),
			Fuse: newFuse(cfg),
		},
	}, nil
}

// CanonicalName turns every spelling of a mapper into its name: "krbd" or
// "rbd" (ceph-csi's name for krbd, and its default); "rbd-nbd" or "nbd";
// "fuse" or "rbd-fuse". "" (the node's default) stays "".
func CanonicalName(name string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "":
		return "", nil
	case "krbd", "rbd":
		return KRBD, nil
	case "rbd-nbd", "nbd":
		return NBD, nil
	case "fuse", "rbd-fuse":
		return Fuse, nil
	}
	return "", fmt.Errorf("%w %q: use krbd (or rbd), rbd-nbd (or nbd) or fuse (or rbd-fuse)", ErrUnknownMapper, name)
}

// Get returns the mapper called name; "" means the node's default.
func (r *Registry) Get(name string) (Mapper, error) {
	canonical, err := CanonicalName(name)
	if err != nil {
		return nil, err
	}
	if canonical == "" {
		canonical = r.defaultName
	}
	m, ok := r.mappers[canonical]
	if !ok {
		return nil, fmt.Errorf("%w %q: not configured", ErrUnknownMapper, canonical)
	}
	return m, nil
}

// All returns every mapper, in the order krbd, rbd-nbd, fuse.
func (r *Registry) All() []Mapper {
	var out []Mapper
	for _, name := range []string{KRBD, NBD, Fuse} {
		if m, ok := r.mappers[name]; ok {
			out = append(out, m)
		}
	}
	return out
}

// writeKeyfile writes the key of creds to a key file under stateDir (see
// ceph.WriteKeyFile); SweepKeyfiles removes what a crash left.
func writeKeyfile(stateDir string, creds ceph.Credentials) (string, func(), error) {
	if stateDir == "" {
		return "", nil, fmt.Errorf("%w: no state directory for key files", ErrUnavailable)
	}
	return ceph.WriteKeyFile(ceph.KeyFileDir(stateDir), creds)
}

// SweepKeyfiles removes every keyfile under stateDir: run at start-up,
// before any call can write one, it removes what a crash left behind.
// It also removes keyfiles that older versions kept in fuse mapping
// directories.
func SweepKeyfiles(stateDir string) error {
	if stateDir == "" {
		return nil
	}
	var errs []error
	if err := ceph.RemoveKeyFiles(ceph.KeyFileDir(stateDir)); err != nil {
		errs = append(errs, err)
	}
	legacy, _ := filepath.Glob(filepath.Join(stateDir, "fuse", "*", "keyfile"))
	for _, f := range legacy {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// waitForDevice waits for a device node to appear; udev may be slow.
func waitForDevice(ctx context.Context, timeout time.Duration, device string) error {
	return util.WaitFor(ctx, timeout, "device "+device, func() (bool, error) {
		_, err := os.Stat(device)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	})
}

// exitCode returns the exit status of a failed command, or -1.
func exitCode(err error) int {
	var ee *util.ExecError
	if errors.As(err, &ee) {
		return ee.ExitCode
	}
	return -1
}

// isBusy recognises a command failing with EBUSY.
func isBusy(err error, out []byte) bool {
	text := string(out)
	var ee *util.ExecError
	if errors.As(err, &ee) {
		text += ee.Output
	}
	return exitCode(err) == 16 || strings.Contains(text, "Device or resource busy") ||
		strings.Contains(text, "(16)") || strings.Contains(text, "target is busy")
}

// busyError wraps ErrBusy, naming what holds device when that can be found.
func busyError(ctx context.Context, mounts Mounts, device string, cause error) error {
	holders, _ := mounts.Holders(ctx, device)
	if len(holders) > 0 {
		return fmt.Errorf("%w: %s is in use by %s: %v", ErrBusy, device, strings.Join(holders, ", "), cause)
	}
	return fmt.Errorf("%w: %s is held open: %v", ErrBusy, device, cause)
}

// noConfig keeps the rbd tools from reading a ceph.conf of the node's: the
// driver passes everything they need, and a stray file would change what
// they do (and their complaints about a missing one end up in errors).
func noConfig() []string { return []string{"--conf", "/dev/null"} }

// mapFailure classifies a failed map command: a tool that is not
// installed is ErrUnavailable, and EINVAL (exit status 22: an option or
// image spec the tool refuses) is ErrUnsupportedOption.
func mapFailure(err error, mapperName string) error {
	if exitCode(err) == int(syscall.EINVAL) {
		return fmt.Errorf("%w: %v", ErrUnsupportedOption, err)
	}
	return unavailableIfMissing(err, mapperName)
}

// unavailableIfMissing marks a command that could not start because its
// binary is not installed as ErrUnavailable.
func unavailableIfMissing(err error, mapperName string) error {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s: %v", ErrUnavailable, mapperName, err)
	}
	return err
}

// toolRuns checks that a tool the mapper needs is installed and starts.
func toolRuns(ctx context.Context, cfg Config, tool, mapperName string) error {
	if _, err := cfg.Runner.Run(ctx, tool, "--version"); err != nil {
		return fmt.Errorf("%w: %s: %s does not run: %v", ErrUnavailable, mapperName, tool, err)
	}
	return nil
}

// moduleLoaded checks for /sys/module/NAME, loading the module if absent.
func moduleLoaded(ctx context.Context, cfg Config, module, mapperName string) error {
	path := filepath.Join(cfg.SysfsRoot, "module", module)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	_, err := cfg.Runner.Run(ctx, cfg.ModprobeBinary, module)
	if _, statErr := os.Stat(path); statErr == nil {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("%s is still missing after modprobe", path)
	}
	return fmt.Errorf("%w: %s: kernel has no %s module (%v); use mounter=fuse",
		ErrUnavailable, mapperName, module, err)
}

// RegistryOf builds a Registry from given mappers, e.g. FakeMappers in
// other packages' tests. Each mapper's Name must be krbd, rbd-nbd or fuse.
func RegistryOf(defaultName string, mappers ...Mapper) (*Registry, error) {
	r := &Registry{mappers: map[string]Mapper{}}
	for _, m := range mappers {
		name, err := CanonicalName(m.Name())
		if err != nil || name == "" {
			return nil, fmt.Errorf("%w %q", ErrUnknownMapper, m.Name())
		}
		r.mappers[name] = m
	}
	def, err := CanonicalName(defaultName)
	if err != nil {
		return nil, err
	}
	if def == "" {
		def = KRBD
	}
	if _, ok := r.mappers[def]; !ok {
		return nil, fmt.Errorf("%w: default %q is not among the mappers", ErrUnknownMapper, def)
	}
	r.defaultName = def
	return r, nil
}
