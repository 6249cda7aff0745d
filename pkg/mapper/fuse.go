package mapper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// fuse maps images without kernel rbd or nbd: each mapping runs its own
// rbd-fuse process, restricted to that one image and mounted in its own
// directory, and puts a loop device on the file it exposes. Unmapping one
// image never touches another's process or mount.
//
// rbd-fuse is started through Config.Daemons, so it can outlive the
// plugin; a restarted plugin finds its mappings in state.json. The cephx
// key is in a keyfile under StateDir/keys only until rbd-fuse and `rbd
// status` have connected.
//
// Each mapping lives in StateDir/fuse/<hash>/:
//
//	state.json   what is mapped (survives driver restarts)
//	ceph.conf    mon_host, and the librbd cache off
//	client.asok  rbd-fuse's admin socket
//	rbd-fuse.log rbd-fuse's log
//	mnt/         the rbd-fuse mount; mnt/IMAGE is the image
type fuse struct {
	cfg   Config
	locks keyedMutex
}

const (
	fuseStateFile  = "state.json"
	fuseConfFile   = "ceph.conf"
	fuseSocketFile = "client.asok"
	fuseLogFile    = "rbd-fuse.log"
	fuseMountDir   = "mnt"

	// maxSocketPath is the longest path a unix socket can bind to.
	maxSocketPath = 107
)

// fuseState is a mapping's state.json.
type fuseState struct {
	ClusterID      string `json:"clusterID"`
	Pool           string `json:"pool"`
	RadosNamespace string `json:"radosNamespace,omitempty"`
	Image          string `json:"image"`
	Mountpoint     string `json:"mountpoint"`
	Device         string `json:"device"`
	PID            int    `json:"pid"`
	ReadOnly       bool   `json:"readOnly"`
	ClientAddr     string `json:"clientAddr,omitempty"`
	ClientID       string `json:"clientID,omitempty"`
}

func (s fuseState) mapping() Mapping {
	return Mapping{Mapper: Fuse, Pool: s.Pool, RadosNamespace: s.RadosNamespace, Image: s.Image,
		Device: s.Device, ClientAddr: s.ClientAddr, ClientID: s.ClientID}
}

// imageFile is the file rbd-fuse exposes the image as.
func (s fuseState) imageFile() string { return filepath.Join(s.Mountpoint, s.Image) }

func newFuse(cfg Config) *fuse { return &fuse{cfg: cfg} }

func (f *fuse) Name() string { return Fuse }

func (f *fuse) root() string { return filepath.Join(f.cfg.StateDir, "fuse") }

// dirFor names a mapping's directory by a hash of what it maps: image
// names may hold any character, and the admin socket path must stay short.
func (f *fuse) dirFor(clusterID, pool, namespace, image string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{clusterID, pool, namespace, image}, "\x00")))
	return filepath.Join(f.root(), hex.EncodeToString(sum[:8]))
}

func (f *fuse) Check(ctx context.Context) error {
	if err := f.preflight(); err != nil {
		return err
	}
	for _, tool := range []string{f.cfg.FuseBinary, f.cfg.LosetupBinary, f.cfg.RBDBinary} {
		if err := toolRuns(ctx, f.cfg, tool, Fuse); err != nil {
			return err
		}
	}
	return nil
}

// preflight is the part of Check that runs nothing, done before every Map.
func (f *fuse) preflight() error {
	if f.cfg.StateDir == "" {
		return fmt.Errorf("%w: fuse: no state directory configured", ErrUnavailable)
	}
	socket := filepath.Join(f.dirFor("", "", "", ""), fuseSocketFile)
	if len(socket) > maxSocketPath {
		return fmt.Errorf("%w: fuse: state directory %s is too long for admin sockets (%s is over %d bytes)",
			ErrUnavailable, f.cfg.StateDir, socket, maxSocketPath)
	}
	if _, err := os.Stat(filepath.Join(f.cfg.DevRoot, "fuse")); err != nil {
		return fmt.Errorf("%w: fuse: no FUSE device: %v", ErrUnavailable, err)
	}
	return nil
}

func (f *fuse) Map(ctx context.Context, img Image, opts MapOptions) (Mapping, error) {
	if err := img.validate(); err != nil {
		return Mapping{}, err
	}
	if opts.Exclusive {
		return Mapping{}, fmt.Errorf("%w: fuse cannot hold the exclusive lock of %s; use krbd or rbd-nbd", ErrUnsupportedOption, img.Spec())
	}
	if opts.Options != "" {
		return Mapping{}, fmt.Errorf("%w: fuse takes no map options, got %q", ErrUnsupportedOption, opts.Options)
	}
	if err := f.preflight(); err != nil {
		return Mapping{}, err
	}
	dir := f.dirFor(img.ClusterID, img.Pool, img.RadosNamespace, img.Name)
	unlock, err := f.locks.lock(ctx, dir)
	if err != nil {
		return Mapping{}, err
	}
	defer unlock()

	st, err := readFuseState(dir)
	if err == nil && f.healthy(ctx, st) {
		if st.ReadOnly != opts.ReadOnly {
			return Mapping{}, fmt.Errorf("%s is already mapped on %s with read-only=%v; unmap it first",
				img.Spec(), st.Device, st.ReadOnly)
		}
		return st.mapping(), nil
	}
	if _, statErr := os.Stat(dir); statErr == nil {
		// Left over from a crash or reboot: clear it and map afresh.
		klog.InfoS("fuse: clearing a stale mapping", "image", img.Spec(), "dir", dir, "readErr", err)
		if err := f.teardown(ctx, dir, st, false); err != nil {
			return Mapping{}, fmt.Errorf("clearing stale fuse mapping of %s: %w", img.Spec(), err)
		}
	}

	st, err = f.start(ctx, dir, img, opts)
	if err != nil {
		// Clean up even if ctx has ended; the cleanup has its own bounds.
		cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if terr := f.teardown(cleanupCtx, dir, st, true); terr != nil {
			klog.ErrorS(terr, "fuse: cleaning up after a failed map", "image", img.Spec(), "dir", dir)
		}
		return Mapping{}, err
	}
	return st.mapping(), nil
}

// start runs rbd-fuse for img in dir and puts a loop device on the image.
// The state it returns describes whatever it set up, also on error.
func (f *fuse) start(ctx context.Context, dir string, img Image, opts MapOptions) (fuseState, error) {
	st := fuseState{ClusterID: img.ClusterID, Pool: img.Pool, RadosNamespace: img.RadosNamespace, Image: img.Name,
		Mountpoint: filepath.Join(dir, fuseMountDir), ReadOnly: opts.ReadOnly}
	if err := os.MkdirAll(st.Mountpoint, 0o700); err != nil {
		return st, fmt.Errorf("creating fuse mapping directory: %w", err)
	}
	conf := filepath.Join(dir, fuseConfFile)
	// No librbd cache: the page cache above the loop device already
	// buffers, and without it a write that Ceph refuses (a fenced client)
	// fails as an I/O error instead of being acknowledged and dropped.
	if err := os.WriteFile(conf, []byte("[global]\nmon_host = "+img.monHost()+"\nrbd_cache = false\n"), 0o600); err != nil {
		return st, fmt.Errorf("writing %s: %w", conf, err)
	}
	keyfile, removeKey, err := writeKeyfile(f.cfg.StateDir, img.Creds)
	if err != nil {
		return st, err
	}
	// Only needed until rbd-fuse (and `rbd status`, see watchers) have authenticated.
	defer removeKey()

	if err := f.runFuse(ctx, dir, img, conf, keyfile, st.Mountpoint); err != nil {
		return st, err
	}
	st.PID = f.findPID(st.Mountpoint)
	// Record the process at once, so that a crash from here on leaves a
	// mapping that List shows and Unmap or the next Map clears.
	if err := writeFuseState(dir, st); err != nil {
		return st, err
	}
	// rbd-fuse has not opened the image yet: it opens it at the first
	// lookup of its file, which waitForImage makes (TestFuseRealAdmit).
	if err := opts.admit(ctx); err != nil {
		return st, err
	}
	if err := f.waitForImage(ctx, dir, st); err != nil {
		return st, err
	}
	// Which client rbd-fuse is takes admin socket calls and an open of the
	// image: learnt while the loop device attaches. It ends before the
	// key file goes (deferred calls run last first).
	identity := make(chan [2]string, 1)
	go func() {
		addr, id := f.clientIdentity(ctx, dir, img, conf, keyfile, opts.Watchers)
		identity <- [2]string{addr, id}
		f.quietMessenger(ctx, dir, img)
	}()
	learnt := sync.OnceValue(func() [2]string { return <-identity })
	defer learnt()

	device, err := f.attachLoop(ctx, st)
	if err != nil {
		return st, err
	}
	st.Device = device
	if err := waitForDevice(ctx, f.cfg.DeviceTimeout, device); err != nil {
		return st, err
	}
	st.ClientAddr, st.ClientID = learnt()[0], learnt()[1]
	if err := writeFuseState(dir, st); err != nil {
		return st, err
	}
	klog.InfoS("fuse: mapped", "image", img.Spec(), "device", device, "pid", st.PID, "client", st.ClientAddr)
	return st, nil
}

// runFuse starts rbd-fuse, which mounts and then daemonizes: the command
// returns once the mount exists.
func (f *fuse) runFuse(ctx context.Context, dir string, img Image, conf, keyfile, mountpoint string) error {
	args := []string{
		"-c", conf, "--id", img.Creds.ID, "--keyfile", keyfile,
		"--admin-socket", filepath.Join(dir, fuseSocketFile),
		"--log-file", filepath.Join(dir, fuseLogFile),
		"--log-to-stderr=false", "--err-to-stderr=false",
		// Messenger logging at level 1 in memory only: its "learned my
		// addr" line is how we learn the client address (see clientIdentity).
		"--debug-ms=0/1",
		"--poolname=" + img.Pool,
	}
	if img.RadosNamespace != "" {
		args = append(args, "--namespace="+img.RadosNamespace)
	}
	args = append(args, "--image="+img.Name, mountpoint)
	ctx, cancel := context.WithTimeout(ctx, f.cfg.FuseStartTimeout)
	defer cancel()
	name := f.cfg.FuseBinary
	if f.cfg.FuseNetNS != "" {
		// nsenter execs rbd-fuse, so the daemon's command line stays its own.
		name, args = "nsenter", append([]string{"--net=" + f.cfg.FuseNetNS, "--", f.cfg.FuseBinary}, args...)
	}
	// The daemon must outlive this process: Daemons runs it where a
	// restart of the plugin cannot reach it.
	if _, err := f.cfg.Daemons.Run(ctx, name, args...); err != nil {
		return fmt.Errorf("starting rbd-fuse for %s as %s: %w", img.Spec(), img.Creds, unavailableIfMissing(err, Fuse))
	}
	return nil
}

// fuseStartPoll is the longest delay between looks for rbd-fuse's image file.
const fuseStartPoll = 5 * time.Millisecond

// waitForImage waits until rbd-fuse serves the image file. rbd-fuse
// connects to the cluster only after it has daemonized; if that fails it
// exits and leaves a dead mount behind.
func (f *fuse) waitForImage(ctx context.Context, dir string, st fuseState) error {
	// rbd-fuse serves after tens of milliseconds (its connection to the
	// cluster): look every few, not up to MaxPollInterval late.
	err := util.WaitEvery(ctx, f.cfg.FuseStartTimeout, fuseStartPoll, "rbd-fuse to serve "+st.Image, func() (bool, error) {
		_, err := nodefs.StatBounded(ctx, st.imageFile())
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.ENOTCONN):
			return false, fmt.Errorf("rbd-fuse exited: %w", err)
		case errors.Is(err, os.ErrNotExist) && st.PID != 0 && !f.fuseAlive(st.PID, st.Mountpoint):
			return false, errors.New("rbd-fuse exited")
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("rbd-fuse for %s/%s: %w%s", st.Pool, st.Image, err, logTail(filepath.Join(dir, fuseLogFile)))
	}
	return nil
}

// clientIdentity finds the Ceph client instance of this mapping's rbd-fuse,
// the address a fence must blocklist. librados clients offer no admin
// socket command for it, so: rbd-fuse keeps messenger logging in memory;
// "log dump" writes it out, and its "learned my addr" lines give every
// address the process used. rbd-fuse also ran short-lived clients (monmap
// and config fetch), so the one that counts is the one watching the image:
// the watcher of the image (rbd status) whose address is in that set. The
// result is "", "" when it cannot be found; mapping still succeeds.
func (f *fuse) clientIdentity(ctx context.Context, dir string, img Image, conf, keyfile string,
	list func(context.Context) ([]Watcher, error)) (addr, id string) {
	socket := filepath.Join(dir, fuseSocketFile)
	ours, err := f.learnedAddrs(ctx, socket, filepath.Join(dir, fuseLogFile))
	if err != nil {
		klog.ErrorS(err, "fuse: cannot learn the rbd-fuse client address", "image", img.Spec())
		return "", ""
	}
	watchers, err := f.watchers(ctx, img, conf, keyfile, list)
	if err != nil {
		klog.ErrorS(err, "fuse: cannot list the image's watchers", "image", img.Spec())
		return "", ""
	}
	for _, w := range watchers {
		for _, a := range ceph.PlainAddrs(w.Addr) {
			if ours[a] {
				return a, "client." + strconv.FormatUint(w.Client, 10)
			}
		}
	}
	klog.InfoS("fuse: no watcher of the image matches rbd-fuse's addresses", "image", img.Spec(),
		"addresses", ours, "watchers", watchers)
	return "", ""
}

// quietMessenger turns rbd-fuse's in-memory messenger logging, needed
// only until clientIdentity has read it, back off. It runs after the
// identity is handed over, off the stage's path, on a deadline of its
// own: the stage may have answered by then.
func (f *fuse) quietMessenger(ctx context.Context, dir string, img Image) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), asokQuietTimeout)
	defer cancel()
	cmd := map[string]any{"prefix": "config set", "var": "debug_ms", "val": []string{"0/0"}}
	if _, err := asokCommand(ctx, filepath.Join(dir, fuseSocketFile), cmd); err != nil {
		klog.ErrorS(err, "fuse: resetting rbd-fuse messenger logging", "image", img.Spec())
	}
}

// asokQuietTimeout bounds quietMessenger's admin socket call.
const asokQuietTimeout = 10 * time.Second

func (f *fuse) learnedAddrs(ctx context.Context, socket, logFile string) (map[string]bool, error) {
	if _, err := asokCommand(ctx, socket, map[string]any{"prefix": "log dump"}); err != nil {
		return nil, err
	}
	var addrs map[string]bool
	// The dump is written by rbd-fuse's log thread; give it a moment.
	err := util.WaitFor(ctx, 2*time.Second, "rbd-fuse log dump", func() (bool, error) {
		data, err := os.ReadFile(logFile)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		addrs = learnedAddrs(string(data))
		return len(addrs) > 0, nil
	})
	return addrs, err
}

// watchers lists the image's watchers with list (MapOptions.Watchers),
// through Config.Watchers, or else with `rbd status`.
func (f *fuse) watchers(ctx context.Context, img Image, conf, keyfile string, list func(context.Context) ([]Watcher, error)) ([]Watcher, error) {
	if list != nil {
		return list(ctx)
	}
	if f.cfg.Watchers != nil {
		return f.cfg.Watchers.Watchers(ctx, img)
	}
	args := []string{"-c", conf, "--id", img.Creds.ID, "--keyfile", keyfile,
		"status", "--format", "json", "--pool", img.Pool}
	if img.RadosNamespace != "" {
		args = append(args, "--namespace", img.RadosNamespace)
	}
	args = append(args, "--image", img.Name)
	out, err := f.cfg.Runner.Run(ctx, f.cfg.RBDBinary, args...)
	if err != nil {
		return nil, err
	}
	var status struct {
		Watchers []struct {
			Address string `json:"address"`
			Client  uint64 `json:"client"`
		} `json:"watchers"`
	}
	if err := decodeJSON(out, &status); err != nil {
		return nil, fmt.Errorf("rbd status: %w", err)
	}
	ws := make([]Watcher, 0, len(status.Watchers))
	for _, w := range status.Watchers {
		ws = append(ws, Watcher{Addr: w.Address, Client: w.Client})
	}
	return ws, nil
}

// attachLoop puts a loop device on the image file.
func (f *fuse) attachLoop(ctx context.Context, st fuseState) (string, error) {
	device, err := mount.AttachLoop(ctx, f.cfg.Runner, st.imageFile(), st.ReadOnly)
	if err != nil {
		return "", err
	}
	return filepath.Join(f.cfg.DevRoot, strings.TrimPrefix(device, "/dev/")), nil
}

// healthy reports whether a recorded mapping is still fully in place.
func (f *fuse) healthy(ctx context.Context, st fuseState) bool { return f.check(ctx, st) == nil }

// check says what is missing from a recorded mapping: nil when rbd-fuse
// runs, its mount is in place and the loop device reads the image. It
// reads /proc, sysfs and the mount table only: nothing that waits for
// rbd-fuse.
func (f *fuse) check(ctx context.Context, st fuseState) error {
	switch {
	case !f.fuseAlive(st.PID, st.Mountpoint):
		return fmt.Errorf("%w: rbd-fuse (pid %d) for %s/%s has exited", ErrMappingDead, st.PID, st.Pool, st.Image)
	case st.Device == "":
		return fmt.Errorf("%w: the mapping of %s/%s was never completed", ErrMappingDead, st.Pool, st.Image)
	case f.loopBacking(st.Device) != st.imageFile():
		return fmt.Errorf("%w: loop device %s no longer reads %s", ErrMappingDead, st.Device, st.imageFile())
	}
	mounted, err := f.cfg.Mounts.IsMountPoint(ctx, st.Mountpoint)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("%w: rbd-fuse's mount at %s is gone", ErrMappingDead, st.Mountpoint)
	}
	return nil
}

// Alive implements Mapper.
func (f *fuse) Alive(ctx context.Context, m Mapping) error {
	_, st, found, err := f.find(m)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: no fuse mapping of %s on %s is recorded", ErrMappingDead, specOf(m), m.Device)
	}
	return f.check(ctx, st)
}

func (f *fuse) Unmap(ctx context.Context, m Mapping, opts UnmapOptions) error {
	dir, st, found, err := f.find(m)
	if err != nil || !found {
		return err
	}
	unlock, err := f.locks.lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	return f.teardown(ctx, dir, st, opts.Force)
}

// teardown undoes a mapping, or whatever part of it exists, in order: loop
// device, mount, process, directory. It stops with ErrBusy, changing
// nothing, while the loop device is in use, unless forced: then loop
// devices in use are left to detach on their last close, the mount is
// detached lazily and rbd-fuse is killed. Either way, once it returns nil
// the rbd-fuse process, and so its Ceph client instance, is gone.
func (f *fuse) teardown(ctx context.Context, dir string, st fuseState, force bool) error {
	if st.Mountpoint == "" {
		st.Mountpoint = filepath.Join(dir, fuseMountDir)
	}
	if err := f.detachLoops(ctx, st.Mountpoint, force); err != nil {
		return err
	}
	pid := st.PID
	if pid == 0 || !f.fuseAlive(pid, st.Mountpoint) {
		pid = f.findPID(st.Mountpoint)
	}
	unmount := f.cfg.Mounts.Unmount
	if force {
		unmount = f.cfg.Mounts.Detach
	}
	if err := unmount(ctx, st.Mountpoint); err != nil {
		if isBusy(err, nil) {
			return fmt.Errorf("%w: rbd-fuse mount %s: %v", ErrBusy, st.Mountpoint, err)
		}
		return fmt.Errorf("unmounting rbd-fuse at %s: %w", st.Mountpoint, err)
	}
	if force && pid != 0 {
		// Its mount may live on in a loop device; the process must not.
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stopping rbd-fuse (pid %d): %w", pid, err)
		}
	}
	if err := f.waitForExit(ctx, pid, st.Mountpoint); err != nil {
		return err
	}
	if err := removeFuseDir(dir); err != nil {
		return err
	}
	klog.InfoS("fuse: unmapped", "image", specOf(st.mapping()), "device", st.Device, "forced", force)
	return nil
}

// detachLoops detaches every loop device on a file under mountpoint,
// unless one is in use: losetup -d on a busy device would only mark it to
// detach on last close. Forced, that is what it does, and goes on. The
// scan also finds a device attached just before a crash, which state.json
// does not record.
func (f *fuse) detachLoops(ctx context.Context, mountpoint string, force bool) error {
	devices, err := f.loopsUnder(mountpoint)
	if err != nil {
		return err
	}
	for _, device := range devices {
		holders, err := f.cfg.Mounts.Holders(ctx, device)
		if err != nil {
			return fmt.Errorf("finding what holds %s: %w", device, err)
		}
		if len(holders) > 0 && !force {
			return fmt.Errorf("%w: %s is in use by %s", ErrBusy, device, strings.Join(holders, ", "))
		}
	}
	for _, device := range devices {
		backing := f.loopBacking(device)
		if _, err := f.cfg.Runner.Run(ctx, f.cfg.LosetupBinary, "-d", device); err != nil {
			return fmt.Errorf("detaching %s: %w", device, err)
		}
		if force {
			continue
		}
		err := util.WaitFor(ctx, f.cfg.DeviceTimeout, device+" to detach", func() (bool, error) {
			return f.loopBacking(device) != backing, nil
		})
		if err != nil {
			return fmt.Errorf("%w: %s is held open by a process; it detaches when that closes it: %v", ErrBusy, device, err)
		}
	}
	return nil
}

// loopsUnder returns the loop devices whose backing file is under dir.
func (f *fuse) loopsUnder(dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(f.cfg.SysfsRoot, "block"))
	if err != nil {
		return nil, fmt.Errorf("listing loop devices: %w", err)
	}
	var devices []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		device := filepath.Join(f.cfg.DevRoot, e.Name())
		if strings.HasPrefix(f.loopBacking(device), dir+"/") {
			devices = append(devices, device)
		}
	}
	return devices, nil
}

// loopBacking returns the file behind a loop device, "" if none.
func (f *fuse) loopBacking(device string) string {
	b, err := os.ReadFile(filepath.Join(f.cfg.SysfsRoot, "block", filepath.Base(device), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// waitForExit waits for rbd-fuse to exit after its unmount; it holds the
// image's watch until then. One that lingers is asked to stop.
func (f *fuse) waitForExit(ctx context.Context, pid int, mountpoint string) error {
	if pid == 0 {
		return nil
	}
	exited := func() (bool, error) { return !f.fuseAlive(pid, mountpoint), nil }
	if err := util.WaitFor(ctx, f.cfg.FuseExitTimeout, "rbd-fuse to exit", exited); err == nil {
		return nil
	}
	klog.InfoS("fuse: rbd-fuse did not exit after unmount; sending SIGTERM", "pid", pid, "mountpoint", mountpoint)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping rbd-fuse (pid %d): %w", pid, err)
	}
	if err := util.WaitFor(ctx, f.cfg.FuseExitTimeout, "rbd-fuse to exit", exited); err != nil {
		return fmt.Errorf("rbd-fuse (pid %d) for %s: %w", pid, mountpoint, err)
	}
	return nil
}

// fuseAlive reports whether pid is an rbd-fuse process serving mountpoint.
// Checking the command line guards against a reused pid; a zombie has an
// empty one and counts as exited.
func (f *fuse) fuseAlive(pid int, mountpoint string) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile(filepath.Join(f.cfg.ProcRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	if filepath.Base(args[0]) != filepath.Base(f.cfg.FuseBinary) {
		return false
	}
	for _, a := range args[1:] {
		if a == mountpoint {
			return true
		}
	}
	return false
}

// findPID finds the rbd-fuse process serving mountpoint; 0 if none. rbd-fuse
// daemonizes and ignores --pid-file, so /proc is the only record.
func (f *fuse) findPID(mountpoint string) int {
	entries, err := os.ReadDir(f.cfg.ProcRoot)
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && f.fuseAlive(pid, mountpoint) {
			return pid
		}
	}
	return 0
}

func (f *fuse) List(context.Context) ([]Mapping, error) {
	states, err := f.states()
	if err != nil {
		return nil, err
	}
	var ms []Mapping
	for _, s := range states {
		ms = append(ms, s.state.mapping())
	}
	sortMappings(ms)
	return ms, nil
}

type dirState struct {
	dir   string
	state fuseState
}

// states reads every recorded mapping.
func (f *fuse) states() ([]dirState, error) {
	entries, err := os.ReadDir(f.root())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing fuse mappings: %w", err)
	}
	var out []dirState
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(f.root(), e.Name())
		st, err := readFuseState(dir)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				klog.ErrorS(err, "fuse: unreadable mapping state", "dir", dir)
			}
			continue
		}
		out = append(out, dirState{dir, st})
	}
	return out, nil
}

// find returns the recorded mapping m describes: by device when m names
// one, otherwise by image.
func (f *fuse) find(m Mapping) (string, fuseState, bool, error) {
	states, err := f.states()
	if err != nil {
		return "", fuseState{}, false, err
	}
	var matches []dirState
	for _, s := range states {
		byDevice := m.Device != "" && s.state.Device == m.Device
		byImage := m.Device == "" && s.state.Pool == m.Pool &&
			s.state.RadosNamespace == m.RadosNamespace && s.state.Image == m.Image
		if byDevice || byImage {
			matches = append(matches, s)
		}
	}
	switch len(matches) {
	case 0:
		return "", fuseState{}, false, nil
	case 1:
		return matches[0].dir, matches[0].state, true, nil
	}
	return "", fuseState{}, false, fmt.Errorf("%s is mapped from %d clusters; name the device to unmap", specOf(m), len(matches))
}

// Resize makes the loop device follow a grown image. rbd-fuse reports the
// new size, but the kernel caches file attributes for about a second and
// the loop device keeps its size until told.
func (f *fuse) Resize(ctx context.Context, m Mapping) error {
	_, st, found, err := f.find(m)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s is not mapped by fuse", specOf(m))
	}
	current := f.loopSize(st.Device)
	_ = util.WaitFor(ctx, 2*time.Second, "the new image size", func() (bool, error) {
		fi, err := nodefs.StatBounded(ctx, st.imageFile())
		return err == nil && fi.Size() > current, nil
	})
	if _, err := f.cfg.Runner.Run(ctx, f.cfg.LosetupBinary, "--set-capacity", st.Device); err != nil {
		return fmt.Errorf("resizing %s: %w", st.Device, err)
	}
	return nil
}

// loopSize returns a block device's size in bytes from sysfs, -1 if unknown.
func (f *fuse) loopSize(device string) int64 {
	b, err := os.ReadFile(filepath.Join(f.cfg.SysfsRoot, "block", filepath.Base(device), "size"))
	if err != nil {
		return -1
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return sectors * 512
}

func readFuseState(dir string) (fuseState, error) {
	var st fuseState
	data, err := os.ReadFile(filepath.Join(dir, fuseStateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%s: %w", filepath.Join(dir, fuseStateFile), err)
	}
	return st, nil
}

// writeFuseState replaces state.json atomically.
func writeFuseState(dir string, st fuseState) error {
	if err := nodefs.WriteJSON(filepath.Join(dir, fuseStateFile), st); err != nil {
		return fmt.Errorf("writing fuse mapping state: %w", err)
	}
	return nil
}

// removeFuseDir removes a mapping directory once nothing is mounted in it.
// It never recurses: were mnt still an rbd-fuse mount, deleting the file in
// it would delete the RBD image.
func removeFuseDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	if err := os.Remove(filepath.Join(dir, fuseMountDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing fuse mount directory: %w", err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing fuse mapping directory: %w", err)
	}
	return nil
}

// logTail returns the end of a log file for an error message, or "".
func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	const keep = 1024
	if len(data) > keep {
		data = data[len(data)-keep:]
	}
	return "; rbd-fuse log ends: " + string(bytes.TrimSpace(data))
}

// keyedMutex serializes work per key; waiting ends with ctx. Keys are
// mapping directories, a handful per node, so entries are never freed.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]chan struct{}
}

func (k *keyedMutex) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]chan struct{}{}
	}
	l, ok := k.locks[key]
	if !ok {
		l = make(chan struct{}, 1)
		k.locks[key] = l
	}
	k.mu.Unlock()
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for another operation on %s: %w", key, ctx.Err())
	}
}
