package cephfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Mounter mounts CephFS paths on a node: ceph-fuse (FuseMounter) or the
// kernel client (KernelMounter); FakeMounter in tests.
type Mounter interface {
	Name() string
	// Check says why this node cannot mount with it (ErrUnavailable), or
	// nil when it can.
	Check(ctx context.Context) error
	// Mount mounts req.Root at req.Dir.
	Mount(ctx context.Context, req MountRequest) (Mount, error)
	// Alive returns ErrMountDead, saying why, when the mount no longer
	// serves (its client died, or it is gone).
	Alive(ctx context.Context, m Mount) error
	// Unmount unmounts m; a busy mount stays, unless force: then it is
	// detached and its client stopped.
	Unmount(ctx context.Context, m Mount, force bool) error
}

// Errors of Mounters.
var (
	ErrUnavailable = errors.New("mounter unavailable on this node")
	ErrMountDead   = errors.New("mount dead")
)

// MountRequest is what to mount, where, and as whom.
type MountRequest struct {
	Monitors []string
	FS, Root string // the filesystem, and the path in it to mount
	Creds    ceph.Credentials
	// Dir is the mount point; its parent directory holds the client's
	// files (admin socket, log).
	Dir     string
	Options []string
}

// Mount is a CephFS path mounted on the node, as the stage record keeps it.
type Mount struct {
	Mounter string `json:"mounter"`
	FS      string `json:"fs"`
	Root    string `json:"root"`
	Dir     string `json:"dir"`
	PID     int    `json:"pid,omitempty"` // ceph-fuse's
}

// FuseMounter mounts with ceph-fuse, started through Daemons so that it can
// outlive the node plugin (see package daemonhost). The key is in a key
// file only until ceph-fuse has mounted; no configuration file is read.
type FuseMounter struct {
	Daemons  util.Runner
	Runner   util.Runner // runs ceph-fuse --version for Check
	Mounts   mount.Mounter
	KeyDir   string
	ProcRoot string // "/proc"
	DevFuse  string // "/dev/fuse"
}

const fuseBinary = "ceph-fuse"

func (f *FuseMounter) Name() string { return MounterFuse }

func (f *FuseMounter) Check(ctx context.Context) error {
	if _, err := os.Stat(f.DevFuse); err != nil {
		return fmt.Errorf("%w: fuse: no FUSE device: %v", ErrUnavailable, err)
	}
	if _, err := f.Runner.Run(ctx, fuseBinary, "--version"); err != nil {
		return fmt.Errorf("%w: fuse: %s does not run: %v", ErrUnavailable, fuseBinary, err)
	}
	return nil
}

func (f *FuseMounter) Mount(ctx context.Context, req MountRequest) (Mount, error) {
	m := Mount{Mounter: MounterFuse, FS: req.FS, Root: req.Root, Dir: req.Dir}
	keyfile, remove, err := ceph.WriteKeyFile(f.KeyDir, req.Creds)
	if err != nil {
		return m, err
	}
	defer remove() // ceph-fuse has read it once it returns
	dir := filepath.Dir(req.Dir)
	args := []string{"-c", "/dev/null", "-m", strings.Join(req.Monitors, ","), "--id", req.Creds.ID,
		"--keyfile", keyfile, "--client_fs=" + req.FS, "-r", req.Root,
		"--admin-socket", filepath.Join(dir, "client.asok"), "--log-file", filepath.Join(dir, "ceph-fuse.log")}
	if len(req.Options) > 0 {
		args = append(args, "-o", strings.Join(req.Options, ","))
	}
	// ceph-fuse returns once req.Dir is mounted, and serves it as a daemon
	// it forks first. Killing ceph-fuse at the deadline leaves that daemon,
	// which a stalled cluster holds: it would keep the call waiting on its
	// output past the deadline, then mount where no record names it. It is
	// stopped too.
	stop := context.AfterFunc(ctx, func() { f.stopClients(req.Dir) })
	_, err = f.Daemons.Run(ctx, fuseBinary, append(args, req.Dir)...)
	if !stop() && err == nil {
		err = ctx.Err() // stopped as it mounted
	}
	if err != nil {
		f.stopClients(req.Dir)
		return m, fmt.Errorf("ceph-fuse mounting %s:%s as %s: %w", req.FS, req.Root, req.Creds, err)
	}
	m.PID = f.findPID(req.Dir)
	return m, nil
}

// fuseExitWait bounds the wait for a ceph-fuse to exit once unmounted.
const fuseExitWait = 10 * time.Second

// awaitExit waits for the ceph-fuse of dir, unmounted, to exit by itself,
// as it does once it has closed its MDS session (giving its caps back),
// so that the client is gone when an unmount returns; one that lingers
// past the wait, or the call's deadline, is stopped.
func (f *FuseMounter) awaitExit(ctx context.Context, dir string) {
	exited := func() (bool, error) { return len(f.findPIDs(dir)) == 0, nil }
	if util.WaitFor(ctx, fuseExitWait, "ceph-fuse to exit", exited) != nil {
		f.stopClients(dir)
	}
}

// stopClients kills every ceph-fuse whose mount point is dir.
func (f *FuseMounter) stopClients(dir string) {
	for _, pid := range f.findPIDs(dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (f *FuseMounter) Alive(ctx context.Context, m Mount) error {
	if !f.serves(m.PID, m.Dir) {
		return fmt.Errorf("%w: ceph-fuse (pid %d) serving %s has exited", ErrMountDead, m.PID, m.Dir)
	}
	return mountedAt(ctx, f.Mounts, m.Dir)
}

func (f *FuseMounter) Unmount(ctx context.Context, m Mount, force bool) error {
	if !force {
		if err := f.Mounts.Unmount(ctx, m.Dir); err != nil {
			return err
		}
		f.awaitExit(ctx, m.Dir)
		return nil
	}
	if err := f.Mounts.Detach(ctx, m.Dir); err != nil {
		return err
	}
	pid := m.PID
	if !f.serves(pid, m.Dir) {
		pid = f.findPID(m.Dir) // a mount no record names
	}
	if pid != 0 {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stopping ceph-fuse (pid %d): %w", pid, err)
		}
	}
	return nil
}

// serves tells whether pid is a ceph-fuse whose mount point is dir; the
// command line guards against a reused pid, and a zombie has none.
func (f *FuseMounter) serves(pid int, dir string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(filepath.Join(f.ProcRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return filepath.Base(args[0]) == fuseBinary && args[len(args)-1] == dir
}

// findPID finds the ceph-fuse serving dir; 0 when none does.
func (f *FuseMounter) findPID(dir string) int {
	if pids := f.findPIDs(dir); len(pids) > 0 {
		return pids[0]
	}
	return 0
}

// findPIDs finds the ceph-fuse processes whose mount point is dir: the
// daemon serving it, and while it mounts, the process that forked it.
func (f *FuseMounter) findPIDs(dir string) []int {
	entries, _ := os.ReadDir(f.ProcRoot)
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && f.serves(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// KernelMounter mounts with the kernel client (mount -t ceph); the key
// reaches the kernel through mount.ceph's secretfile, never an argument.
type KernelMounter struct {
	Mounts   mount.Mounter
	Runner   util.Runner // modprobe
	KeyDir   string
	ProcRoot string // "/proc"
}

func (k *KernelMounter) Name() string { return MounterKernel }

// Check looks for the ceph filesystem in the kernel, loading its module
// when it is missing.
func (k *KernelMounter) Check(ctx context.Context) error {
	if k.hasCeph() {
		return nil
	}
	_, err := k.Runner.Run(ctx, "modprobe", "ceph")
	if k.hasCeph() {
		return nil
	}
	return fmt.Errorf("%w: kernel: this node's kernel has no ceph filesystem (not in /proc/filesystems; modprobe ceph: %v); use mounter fuse",
		ErrUnavailable, err)
}

func (k *KernelMounter) hasCeph() bool {
	b, _ := os.ReadFile(filepath.Join(k.ProcRoot, "filesystems"))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(strings.TrimPrefix(line, "nodev")) == "ceph" {
			return true
		}
	}
	return false
}

func (k *KernelMounter) Mount(ctx context.Context, req MountRequest) (Mount, error) {
	m := Mount{Mounter: MounterKernel, FS: req.FS, Root: req.Root, Dir: req.Dir}
	keyfile, remove, err := ceph.WriteKeyFile(k.KeyDir, req.Creds)
	if err != nil {
		return m, err
	}
	defer remove() // mount.ceph hands the key to the kernel
	mons := make([]string, len(req.Monitors))
	for i, mon := range req.Monitors {
		mons[i] = kernelMonAddr(mon)
	}
	opts := append([]string{"name=" + req.Creds.ID, "secretfile=" + keyfile, "mds_namespace=" + req.FS}, req.Options...)
	return m, k.Mounts.Mount(ctx, strings.Join(mons, ",")+":"+req.Root, req.Dir, "ceph", opts)
}

// kernelMonAddr is the address the kernel's default (v1) messenger reaches
// a monitor at: the v1 address of a vector, without type or nonce.
func kernelMonAddr(mon string) string {
	vec := ceph.AddrVec(mon)
	addr := mon
	for i := len(vec) - 1; i >= 0; i-- {
		if addr = vec[i]; strings.HasPrefix(addr, "v1:") {
			break
		}
	}
	addr, _, _ = strings.Cut(ceph.PlainAddr(addr), "/")
	return addr
}

func (k *KernelMounter) Alive(ctx context.Context, m Mount) error {
	return mountedAt(ctx, k.Mounts, m.Dir)
}

func (k *KernelMounter) Unmount(ctx context.Context, m Mount, force bool) error {
	if force {
		return k.Mounts.Detach(ctx, m.Dir)
	}
	return k.Mounts.Unmount(ctx, m.Dir)
}

func mountedAt(ctx context.Context, m mount.Mounter, dir string) error {
	mounted, err := m.IsMountPoint(ctx, dir)
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("%w: nothing is mounted at %s any more", ErrMountDead, dir)
	}
	return nil
}
