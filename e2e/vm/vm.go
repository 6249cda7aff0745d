// Package vm boots Debian's own kernel under QEMU (software emulation) so that
// tests can use kernel clients this machine's kernel lacks: krbd, rbd-nbd and
// the CephFS kernel client. The guest runs the host's own binaries: the host's
// root filesystem is its root, shared read-only over 9p under a tmpfs overlay.
// It reaches the host, and nothing else, through a TAP on a bridge the VM
// creates, so a test cluster bound to HostAddr serves it.
//
// One boot serves many commands:
//
//	v, err := vm.New(ctx, vm.Options{})   // work dir, bridge
//	defer v.Close()
//	// start the cluster with CEPH_BIND_ADDR=v.HostAddr()
//	err = v.Boot(ctx)                      // TAP, initramfs, QEMU
//	code, err := v.Run(ctx, os.Stdout, nil, "rbd", "--version")
//
// Close leaves nothing behind: QEMU, the TAP, the bridge and the work
// directory go, and a watchdog removes them if the test binary dies first.
package vm

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

// Packages are the Debian packages the guest needs besides those of the test
// cluster: the emulator, a kernel with rbd, nbd and ceph modules, a static
// busybox for the initramfs, and cpio to pack it. kmod and udev run inside
// the guest, as on a node.
var Packages = []string{"qemu-system-x86", "linux-image-amd64", "busybox-static", "cpio", "kmod", "udev"}

// InstallPackages installs, when any is missing, the Packages and those of
// the test cluster, whose tools the guest runs too (e2e/ceph/deps.sh).
func InstallPackages(ctx context.Context) error {
	root, err := cephtest.RepoRoot()
	if err != nil {
		return err
	}
	args := append([]string{filepath.Join(root, "e2e", "ceph", "deps.sh")}, Packages...)
	if out, err := exec.CommandContext(ctx, "bash", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("vm: installing packages: %w: %s", err, out)
	}
	return nil
}

// Options configure a VM. Zero fields take the defaults.
type Options struct {
	// MemoryMiB is the guest's memory; default 1536. Its root overlay and
	// /tmp live in it.
	MemoryMiB int
	// CPUs is the number of virtual CPUs; default 2.
	CPUs int
	// BootTimeout bounds Boot when ctx has no deadline; default 3 minutes.
	BootTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = 1536
	}
	if o.CPUs <= 0 {
		o.CPUs = 2
	}
	if o.BootTimeout <= 0 {
		o.BootTimeout = 3 * time.Minute
	}
	return o
}

// VM is one guest, its network and its work directory.
type VM struct {
	opts   Options
	work   string // shared read-write with the guest, at the same path
	subnet string // "10.252.X"
	bridge string
	tap    string

	watchdog *os.Process

	mu      sync.Mutex // serialises Run: the guest runs one command at a time
	qemu    *exec.Cmd
	exited  chan struct{} // closed when QEMU has exited
	waitErr error
	next    int // number of the next command
	dead    error
}

//go:embed guest/init.sh
var initScript string

//go:embed guest/teardown.sh
var teardownScript string

// guestModules are loaded at boot, with their dependencies: the transport
// of the shared filesystems and the network, the overlay, and what the tests
// use, since the guest's usermode helpers cannot load modules on demand.
var guestModules = []string{"virtio_pci", "virtio_net", "9p", "9pnet_virtio", "overlay", "crc32c_generic",
	"rbd", "nbd", "ceph", "ext4", "xfs"}

// New creates the work directory and the bridge, with a watchdog that
// removes them (and the guest, once booted) should this process die.
func New(ctx context.Context, opts Options) (*VM, error) {
	opts = opts.withDefaults()
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("vm: iproute2 is needed: %w", err)
	}
	work, err := os.MkdirTemp("", "pelagic-vm-")
	if err != nil {
		return nil, err
	}
	tag := randomHex(3)
	v := &VM{opts: opts, work: work, bridge: "pvmb" + tag, tap: "pvmt" + tag, exited: make(chan struct{})}
	if err := v.startWatchdog(); err != nil {
		_ = os.RemoveAll(work)
		return nil, err
	}
	if err := v.createBridge(ctx); err != nil {
		_ = v.Close()
		return nil, err
	}
	return v, nil
}

// HostAddr is the host's address on the bridge: bind the test cluster to it.
func (v *VM) HostAddr() string { return v.subnet + ".1" }

// GuestAddr is the guest's address.
func (v *VM) GuestAddr() string { return v.subnet + ".2" }

// WorkDir is shared read-write with the guest, at the same path: put what a
// command needs there (a test binary, the cluster's description), and let
// it write results there. The guest's /tmp and /run are its own, hiding
// the host's; the rest of the host's filesystem it sees read-only.
func (v *VM) WorkDir() string { return v.work }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (v *VM) startWatchdog() error {
	cmd := exec.Command("bash", "-c", teardownScript, "teardown", "--after", strconv.Itoa(os.Getpid()),
		v.work, v.bridge, v.tap)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm: starting the watchdog: %w", err)
	}
	v.watchdog = cmd.Process
	go func() { _ = cmd.Wait() }()
	return nil
}

// createBridge makes the bridge on a /24 in 10.252.0.0/16 no interface of
// this host uses, picked at random so that concurrent runs do not collide.
func (v *VM) createBridge(ctx context.Context) error {
	used, err := usedSubnets()
	if err != nil {
		return err
	}
	for range 20 {
		b := make([]byte, 1)
		_, _ = rand.Read(b)
		x := 1 + int(b[0])%254
		if used[x] {
			continue
		}
		v.subnet = fmt.Sprintf("10.252.%d", x)
		if err := ip(ctx, "link", "add", v.bridge, "type", "bridge"); err != nil {
			return err
		}
		if err := ip(ctx, "addr", "add", v.HostAddr()+"/24", "dev", v.bridge); err != nil {
			return err
		}
		return ip(ctx, "link", "set", v.bridge, "up")
	}
	return errors.New("vm: no free /24 left in 10.252.0.0/16")
}

// usedSubnets returns X of every 10.252.X.0/24 an interface here is on.
func usedSubnets() (map[int]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("vm: listing addresses: %w", err)
	}
	used := map[int]bool{}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip4 := n.IP.To4(); ip4 != nil && ip4[0] == 10 && ip4[1] == 252 {
				used[int(ip4[2])] = true
			}
		}
	}
	return used, nil
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("vm: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Boot creates the TAP, packs the initramfs and starts the guest, returning
// once the guest is ready to run commands. A guest that is not ready within
// the deadline of ctx (or BootTimeout) is killed.
func (v *VM) Boot(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, v.opts.BootTimeout)
		defer cancel()
	}
	k, err := installedKernel()
	if err != nil {
		return err
	}
	initrd, err := packInitramfs(ctx, k, filepath.Join(v.work, "initramfs"))
	if err != nil {
		return err
	}
	if err := ip(ctx, "tuntap", "add", "dev", v.tap, "mode", "tap"); err != nil {
		return err
	}
	if err := ip(ctx, "link", "set", v.tap, "master", v.bridge); err != nil {
		return err
	}
	if err := ip(ctx, "link", "set", v.tap, "up"); err != nil {
		return err
	}
	if err := v.startQEMU(k, initrd); err != nil {
		return err
	}
	if err := v.waitFor(ctx, filepath.Join(v.work, "ready")); err != nil {
		v.dead = fmt.Errorf("vm: the guest did not come up: %w\n%s", err, v.ConsoleTail(4096))
		v.kill()
		return v.dead
	}
	return nil
}

func (v *VM) startQEMU(k kernel, initrd string) error {
	cmdline := strings.Join([]string{"console=ttyS0", "rdinit=/init", "panic=-1", "quiet",
		"pelagic.addr=" + v.GuestAddr() + "/24", "pelagic.work=" + v.work}, " ")
	args := []string{
		"-name", "pelagic-vm", "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
		// Software emulation: this host offers no nested virtualization.
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-m", strconv.Itoa(v.opts.MemoryMiB), "-smp", strconv.Itoa(v.opts.CPUs),
		"-kernel", k.image, "-initrd", initrd, "-append", cmdline,
		"-serial", "file:" + v.consolePath(),
		"-netdev", "tap,id=net0,ifname=" + v.tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac=52:54:00:" + macTail(),
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + v.work + ",mount_tag=work,security_model=none,multidevs=remap",
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	log, err := os.Create(filepath.Join(v.work, "qemu.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	// The guest dies with this process, even if the watchdog is slow.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm: starting QEMU: %w", err)
	}
	v.qemu = cmd
	if err := os.WriteFile(filepath.Join(v.work, "qemu.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		v.kill()
		return err
	}
	go func() {
		v.waitErr = cmd.Wait()
		close(v.exited)
	}()
	return nil
}

func macTail() string {
	h := randomHex(3)
	return h[0:2] + ":" + h[2:4] + ":" + h[4:6]
}

func (v *VM) consolePath() string { return filepath.Join(v.work, "console.log") }

// ConsoleTail returns the last n bytes of the guest's console (its kernel
// messages), and of QEMU's own output, for a failure message.
func (v *VM) ConsoleTail(n int) string {
	var b strings.Builder
	for _, f := range []string{v.consolePath(), filepath.Join(v.work, "qemu.log")} {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > n {
			data = data[len(data)-n:]
		}
		fmt.Fprintf(&b, "---- %s\n%s\n", filepath.Base(f), data)
	}
	return b.String()
}

// waitFor polls for path to exist, failing when QEMU exits or ctx ends.
func (v *VM) waitFor(ctx context.Context, path string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.exited:
			return fmt.Errorf("QEMU exited: %v", v.waitErr)
		case <-tick.C:
		}
	}
}

// Run runs argv inside the guest as root, in its root directory, with env
// (KEY=value) added to a minimal environment; its output (stdout and stderr)
// is copied to out as it comes. It returns the command's exit status. If ctx
// ends first, the guest is taken to be hung and is killed: Run returns
// ctx's error and the VM runs nothing more.
func (v *VM) Run(ctx context.Context, out io.Writer, env []string, argv ...string) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.qemu == nil {
		return -1, errors.New("vm: not booted")
	}
	if v.dead != nil {
		return -1, fmt.Errorf("vm: the guest is gone: %w", v.dead)
	}
	if len(argv) == 0 {
		return -1, errors.New("vm: no command")
	}
	n := v.next
	v.next++
	prefix := filepath.Join(v.work, "cmd."+strconv.Itoa(n))
	if err := os.WriteFile(prefix+".tmp", []byte(commandScript(env, argv)), 0o644); err != nil {
		return -1, err
	}
	// The guest picks the command up once it is complete.
	if err := os.Rename(prefix+".tmp", prefix); err != nil {
		return -1, err
	}
	code, err := v.follow(ctx, n, out)
	if err != nil {
		v.dead = err
		v.kill()
	}
	return code, err
}

// commandScript is a shell script that runs argv with env.
func commandScript(env, argv []string) string {
	var b strings.Builder
	b.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n")
	for _, kv := range env {
		b.WriteString("export " + shellQuote(kv) + "\n")
	}
	b.WriteString("exec")
	for _, a := range argv {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// follow copies out.N to out until rc.N appears, then returns its status.
func (v *VM) follow(ctx context.Context, n int, out io.Writer) (int, error) {
	outPath := filepath.Join(v.work, "out."+strconv.Itoa(n))
	rcPath := filepath.Join(v.work, "rc."+strconv.Itoa(n))
	var offset int64
	drain := func() error {
		f, err := os.Open(outPath)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer f.Close()
		copied, err := io.Copy(out, io.NewSectionReader(f, offset, 1<<62))
		offset += copied
		return err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		rc, rcErr := os.ReadFile(rcPath)
		if err := drain(); err != nil {
			return -1, err
		}
		if rcErr == nil {
			code, err := strconv.Atoi(strings.TrimSpace(string(rc)))
			if err != nil {
				return -1, fmt.Errorf("vm: command %d: bad exit status %q", n, rc)
			}
			return code, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("vm: command %d did not finish, killing the guest: %w", n, ctx.Err())
		case <-v.exited:
			return -1, fmt.Errorf("vm: QEMU exited while command %d ran: %v\n%s", n, v.waitErr, v.ConsoleTail(4096))
		case <-tick.C:
		}
	}
}

// kill stops QEMU at once and waits for it.
func (v *VM) kill() {
	if v.qemu == nil {
		return
	}
	_ = v.qemu.Process.Kill()
	<-v.exited
}

// Close powers the guest off (killing it if it does not stop within a few
// seconds), deletes the TAP and the bridge, and removes the work directory.
func (v *VM) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.qemu != nil && v.dead == nil {
		_ = os.WriteFile(filepath.Join(v.work, "halt"), nil, 0o644)
		select {
		case <-v.exited:
		case <-time.After(15 * time.Second):
		}
	}
	v.kill()
	if v.watchdog != nil {
		_ = v.watchdog.Kill()
	}
	out, err := exec.Command("bash", "-c", teardownScript, "teardown", v.work, v.bridge, v.tap).CombinedOutput()
	if err != nil {
		return fmt.Errorf("vm: teardown: %w: %s", err, out)
	}
	return nil
}
