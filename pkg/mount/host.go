package mount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	mountutils "k8s.io/mount-utils"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Config configures a HostMounter. Zero fields take the defaults.
type Config struct {
	Runner        util.Runner // required
	MountInfoPath string      // default /proc/self/mountinfo
	SysfsRoot     string      // default /sys
}

// HostMounter performs the operations on this host.
type HostMounter struct {
	runner    util.Runner
	mountInfo string
	sysfs     string
}

var _ Mounter = (*HostMounter)(nil)

// NewHostMounter returns a Mounter for this host.
func NewHostMounter(cfg Config) *HostMounter {
	m := &HostMounter{runner: cfg.Runner, mountInfo: cfg.MountInfoPath, sysfs: cfg.SysfsRoot}
	if m.mountInfo == "" {
		m.mountInfo = "/proc/self/mountinfo"
	}
	if m.sysfs == "" {
		m.sysfs = "/sys"
	}
	return m
}

// blkid exit status when it finds nothing on the device.
const blkidNothingFound = 2

// GetFormat implements Mounter.
func (m *HostMounter) GetFormat(ctx context.Context, device string) (string, error) {
	fsType, _, err := m.probe(ctx, device)
	return fsType, err
}

// probe returns the filesystem and partition table types found on device.
// It reads the device itself (-p), not the blkid cache, which may be stale.
func (m *HostMounter) probe(ctx context.Context, device string) (fsType, ptType string, err error) {
	out, err := m.runner.Run(ctx, "blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", device)
	if err != nil {
		if exitCode(err) == blkidNothingFound {
			return "", "", nil
		}
		return "", "", fmt.Errorf("probing %s for a filesystem: %w", device, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch key {
		case "TYPE":
			fsType = value
		case "PTTYPE":
			ptType = value
		}
	}
	return fsType, ptType, nil
}

// Format implements Mounter.
func (m *HostMounter) Format(ctx context.Context, device, fstype string, options []string) error {
	if _, err := formatArgs(fstype, options); err != nil {
		return err
	}
	fsType, ptType, err := m.probe(ctx, device)
	if err != nil {
		return err
	}
	if fsType != "" || ptType != "" {
		return &NotEmptyError{Device: device, FSType: fsType, PTType: ptType}
	}
	return m.FormatBlank(ctx, device, fstype, options)
}

// FormatBlank implements Mounter.
func (m *HostMounter) FormatBlank(ctx context.Context, device, fstype string, options []string) error {
	args, err := formatArgs(fstype, options)
	if err != nil {
		return err
	}
	if _, err := m.runner.Run(ctx, "mkfs."+fstype, append(args, device)...); err != nil {
		return fmt.Errorf("formatting %s as %s: %w", device, fstype, err)
	}
	return nil
}

// formatArgs returns mkfs's arguments before the device. mkfs never
// discards: a new RBD image reads as zeroes already, and discarding a large
// thin image sends a delete for each of its objects, which can spend the
// whole deadline of the first NodeStage.
func formatArgs(fstype string, options []string) ([]string, error) {
	switch fstype {
	case "ext2", "ext3", "ext4":
		// -F: mkfs.ext* otherwise asks before formatting a whole disk.
		options = withExtendedOption(options, "nodiscard")
		// Lazy init, unless the class's options say otherwise: mke2fs would
		// otherwise write zeroes over the whole journal (32 MiB of a 1 GiB
		// volume, up to 1 GiB of a large one) through the mapping, most of
		// a first NodeStage. A blank image reads as zeroes already, and the
		// journal replays only blocks of its own sequence.
		for _, opt := range []string{"lazy_itable_init=1", "lazy_journal_init=1"} {
			if key, _, _ := strings.Cut(opt, "="); !hasExtendedOption(options, key) {
				options = withExtendedOption(options, opt)
			}
		}
		return append([]string{"-F"}, options...), nil
	case "xfs":
		// No -f: mkfs.xfs then refuses to overwrite a filesystem, a second guard.
		args := append([]string{}, options...)
		if !slices.Contains(args, "-K") {
			args = append(args, "-K")
		}
		return args, nil
	}
	return nil, fmt.Errorf("%w %q: can format ext2, ext3, ext4 and xfs", ErrUnsupportedFilesystem, fstype)
}

// withExtendedOption adds opt to mke2fs's extended options. mke2fs keeps
// only the last -E it is given, so opt joins that one (and, coming last in
// it, overrides a contrary option there), or comes as an -E of its own.
func withExtendedOption(options []string, opt string) []string {
	out := append([]string{}, options...)
	if i, _, ok := lastExtendedOptions(out); ok {
		out[i] += "," + opt
		return out
	}
	return append(out, "-E", opt)
}

// hasExtendedOption reports whether mke2fs's options set key in the -E
// that counts, the last.
func hasExtendedOption(options []string, key string) bool {
	_, list, _ := lastExtendedOptions(options)
	for _, o := range strings.Split(list, ",") {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}

// lastExtendedOptions finds the last -E of mke2fs's options, the one it
// keeps: the index of the argument holding its list ("-E", "a,b" or
// "-Ea,b") and the list.
func lastExtendedOptions(options []string) (i int, list string, ok bool) {
	for i := len(options) - 1; i >= 0; i-- {
		switch {
		case options[i] == "-E" && i+1 < len(options):
			return i + 1, options[i+1], true
		case strings.HasPrefix(options[i], "-E") && len(options[i]) > 2:
			return i, options[i][2:], true
		}
	}
	return 0, "", false
}

// Mount implements Mounter.
func (m *HostMounter) Mount(ctx context.Context, source, target, fstype string, options []string) error {
	var args []string
	if fstype != "" {
		args = append(args, "-t", fstype)
	}
	if len(options) > 0 {
		args = append(args, "-o", strings.Join(options, ","))
	}
	args = append(args, source, target)
	if _, err := m.runner.Run(ctx, "mount", args...); err != nil {
		return fmt.Errorf("mounting %s at %s: %w", source, target, err)
	}
	return nil
}

// BindMount implements Mounter.
func (m *HostMounter) BindMount(ctx context.Context, source, target string, readOnly bool) error {
	if readOnly && isBlockDevice(source) {
		return m.bindReadOnlyDevice(ctx, source, target)
	}
	if _, err := m.runner.Run(ctx, "mount", "--bind", source, target); err != nil {
		return fmt.Errorf("bind mounting %s at %s: %w", source, target, err)
	}
	if !readOnly {
		return nil
	}
	// The kernel ignores "ro" on the bind itself; only a remount applies it.
	if _, err := m.runner.Run(ctx, "mount", "-o", "remount,bind,ro", target); err != nil {
		// Never leave a writable bind where a read-only one was asked for.
		if uerr := m.Unmount(ctx, target); uerr != nil {
			return errors.Join(fmt.Errorf("making bind mount %s read-only: %w", target, err), uerr)
		}
		return fmt.Errorf("making bind mount %s read-only: %w", target, err)
	}
	return nil
}

// bindReadOnlyDevice publishes a block device read-only. A mount's flags
// do not reach the device a device node names (a read-only bind of the
// node still opens the device for writing), so what is bound is a
// read-only loop device over it: every write through it fails, whatever
// the device below allows. Unmount detaches it.
func (m *HostMounter) bindReadOnlyDevice(ctx context.Context, device, target string) error {
	view, err := AttachLoop(ctx, m.runner, device, true)
	if err != nil {
		return fmt.Errorf("making a read-only view of %s: %w", device, err)
	}
	if _, err := m.runner.Run(ctx, "mount", "--bind", view, target); err != nil {
		if _, derr := m.runner.Run(context.WithoutCancel(ctx), "losetup", "-d", view); derr != nil {
			err = errors.Join(err, derr)
		}
		return fmt.Errorf("bind mounting the read-only view %s of %s at %s: %w", view, device, target, err)
	}
	return nil
}

// AttachLoop puts a loop device on file (a regular file or a block
// device) and returns its path as losetup prints it. Direct I/O stays off:
// FUSE files do not support it reliably.
func AttachLoop(ctx context.Context, r util.Runner, file string, readOnly bool) (string, error) {
	args := []string{"--find", "--show", "--direct-io=off"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := r.Run(ctx, "losetup", append(args, file)...)
	if err != nil {
		return "", fmt.Errorf("attaching a loop device to %s: %w", file, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "/dev/") {
			return line, nil
		}
	}
	out = bytes.TrimSpace(out)
	if len(out) > 200 {
		out = out[:200]
	}
	return "", fmt.Errorf("attaching a loop device to %s: losetup printed no device: %q", file, out)
}

func isBlockDevice(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
}

// Unmount implements Mounter.
func (m *HostMounter) Unmount(ctx context.Context, target string) error {
	return m.unmount(ctx, target, false)
}

// Detach implements Mounter.
func (m *HostMounter) Detach(ctx context.Context, target string) error {
	return m.unmount(ctx, target, true)
}

func (m *HostMounter) unmount(ctx context.Context, target string, lazy bool) error {
	mi, mounted, err := m.lookup(ctx, target)
	if err != nil || !mounted {
		return err
	}
	// -c: the path is resolved already; umount would otherwise stat it,
	// and a stat of a hung FUSE mount does not return.
	args := []string{"-c", mi.MountPoint}
	if lazy {
		args = []string{"-l", "-c", mi.MountPoint}
	}
	if _, err := m.runner.Run(ctx, "umount", args...); err != nil {
		// Someone else may have unmounted it meanwhile.
		if still, cerr := m.IsMountPoint(ctx, target); cerr != nil || still {
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
	return m.releaseView(ctx, sourceOf(mi))
}

// releaseView detaches a read-only view bindReadOnlyDevice made: a
// read-only loop device whose backing file is itself a device.
func (m *HostMounter) releaseView(ctx context.Context, source string) error {
	name := filepath.Base(source)
	if !strings.HasPrefix(source, "/dev/loop") {
		return nil
	}
	backing, _ := os.ReadFile(filepath.Join(m.sysfs, "block", name, "loop", "backing_file"))
	ro, _ := os.ReadFile(filepath.Join(m.sysfs, "block", name, "ro"))
	if !strings.HasPrefix(string(backing), "/dev/") || strings.TrimSpace(string(ro)) != "1" {
		return nil
	}
	if _, err := m.runner.Run(ctx, "losetup", "-d", source); err != nil {
		return fmt.Errorf("detaching the read-only view %s: %w", source, err)
	}
	return nil
}

// IsMountPoint implements Mounter. A dead FUSE or network mount counts as
// mounted, so that Unmount still removes it. It never blocks on the
// filesystem mounted at path.
func (m *HostMounter) IsMountPoint(ctx context.Context, path string) (bool, error) {
	_, mounted, err := m.lookup(ctx, path)
	return mounted, err
}

// MountSource implements Mounter.
func (m *HostMounter) MountSource(ctx context.Context, path string) (string, error) {
	mi, mounted, err := m.lookup(ctx, path)
	if err != nil || !mounted {
		return "", err
	}
	return sourceOf(mi), nil
}

// lookup finds the visible mount at path in the mount table. It resolves
// symlinks in path's parent only, as a stat of the path itself reaches the
// filesystem mounted there, and on a FUSE mount whose daemon hangs that
// never returns. The path itself is looked at (bounded by ctx) only when
// the table has no mount there, to follow a symlink.
func (m *HostMounter) lookup(ctx context.Context, path string) (mountutils.MountInfo, bool, error) {
	var none mountutils.MountInfo
	abs, err := filepath.Abs(path)
	if err != nil {
		return none, false, err
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if errors.Is(err, os.ErrNotExist) {
		return none, false, nil
	}
	if err != nil {
		return none, false, err
	}
	p := filepath.Join(parent, filepath.Base(abs))
	if mi, found, err := m.find(p); err != nil || found {
		return mi, found, err
	}
	resolved, err := util.Do(ctx, "resolving "+p, func() (string, error) {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			return "", err
		}
		return filepath.EvalSymlinks(p)
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return none, false, err
	}
	if resolved == "" {
		return none, false, nil
	}
	return m.find(resolved)
}

// find returns the last mount at mountPoint in the table: the visible one.
func (m *HostMounter) find(mountPoint string) (mountutils.MountInfo, bool, error) {
	infos, err := m.mounts()
	if err != nil {
		return mountutils.MountInfo{}, false, err
	}
	var found *mountutils.MountInfo
	for i := range infos {
		if infos[i].MountPoint == mountPoint {
			found = &infos[i]
		}
	}
	if found == nil {
		return mountutils.MountInfo{}, false, nil
	}
	return *found, true, nil
}

// sourceOf names the device of a mount. A bind mount of a device node (a
// raw block volume) shows up as devtmpfs with the node as its root.
func sourceOf(mi mountutils.MountInfo) string {
	if mi.FsType == "devtmpfs" && mi.Root != "/" {
		return filepath.Join("/dev", mi.Root)
	}
	return mi.Source
}

// ResizeFS implements Mounter.
func (m *HostMounter) ResizeFS(ctx context.Context, device, mountPath string) error {
	fsType, err := m.GetFormat(ctx, device)
	if err != nil {
		return err
	}
	switch fsType {
	case "ext2", "ext3", "ext4":
		return m.resizeExt(ctx, device)
	case "xfs":
		if mountPath == "" {
			return fmt.Errorf("xfs on %s can only grow while mounted, and no mount path was given", device)
		}
		if _, err := m.runner.Run(ctx, "xfs_growfs", mountPath); err != nil {
			return fmt.Errorf("growing xfs at %s: %w", mountPath, err)
		}
		return nil
	case "":
		return fmt.Errorf("%s has no filesystem to resize", device)
	default:
		return fmt.Errorf("%w %q on %s: can resize ext2, ext3, ext4 and xfs", ErrUnsupportedFilesystem, fsType, device)
	}
}

// resizeExt grows an ext filesystem, mounted or not. Offline, resize2fs
// insists on a freshly checked filesystem, so e2fsck runs first.
func (m *HostMounter) resizeExt(ctx context.Context, device string) error {
	mountPoints, err := m.mountPointsOf(device)
	if err != nil {
		return err
	}
	online := len(mountPoints) > 0
	if !online {
		// -p repairs only what is safe to repair unattended.
		if _, err := m.runner.Run(ctx, "e2fsck", "-f", "-p", device); err != nil && !fsckRepaired(err) {
			return fmt.Errorf("checking %s before resizing it: %w", device, err)
		}
	}
	out, err := m.runner.Run(ctx, "resize2fs", device)
	if err == nil {
		return nil
	}
	if online && deniedOnlineResize(string(out)+err.Error()) {
		return fmt.Errorf("%w: %s is mounted at %s, so it can only grow after it is unmounted: %v",
			ErrOnlineResizeNotPermitted, device, strings.Join(mountPoints, ", "), err)
	}
	return fmt.Errorf("resizing %s: %w", device, err)
}

// deniedOnlineResize recognises resize2fs failing with EPERM on a mounted
// filesystem: the resize ioctl needs CAP_SYS_RESOURCE. resize2fs words it
// differently depending on which ioctl failed.
func deniedOnlineResize(output string) bool {
	return strings.Contains(output, "Permission denied to resize filesystem") ||
		strings.Contains(output, "Operation not permitted")
}

// fsckRepaired reports an e2fsck exit status of 1 or 2: it found and fixed
// errors. 4 and up mean it could not.
func fsckRepaired(err error) bool {
	code := exitCode(err)
	return code == 1 || code == 2
}

// DeviceSize implements Mounter.
func (m *HostMounter) DeviceSize(ctx context.Context, device string) (int64, error) {
	out, err := m.runner.Run(ctx, "blockdev", "--getsize64", device)
	if err != nil {
		return 0, fmt.Errorf("reading the size of %s: %w", device, err)
	}
	size, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading the size of %s: blockdev printed %q", device, strings.TrimSpace(string(out)))
	}
	return size, nil
}

// Stats implements Mounter. statfs of a hung FUSE mount never returns;
// the caller gets ctx's error at its deadline.
func (m *HostMounter) Stats(ctx context.Context, path string) (VolumeStats, error) {
	return util.Do(ctx, "statfs "+path, func() (VolumeStats, error) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(path, &st); err != nil {
			return VolumeStats{}, fmt.Errorf("statfs %s: %w", path, err)
		}
		return statsFrom(st), nil
	})
}

func statsFrom(st syscall.Statfs_t) VolumeStats {
	frsize := int64(st.Frsize)
	if frsize == 0 {
		frsize = int64(st.Bsize)
	}
	return VolumeStats{
		TotalBytes:     int64(st.Blocks) * frsize,
		UsedBytes:      int64(st.Blocks-st.Bfree) * frsize,
		AvailableBytes: int64(st.Bavail) * frsize,
		TotalInodes:    int64(st.Files),
		UsedInodes:     int64(st.Files - st.Ffree),
		FreeInodes:     int64(st.Ffree),
	}
}

// Holders implements Mounter.
func (m *HostMounter) Holders(_ context.Context, device string) ([]string, error) {
	holders, err := m.mountPointsOf(device)
	if err != nil {
		return nil, err
	}
	resolved, err := filepath.EvalSymlinks(device)
	if err != nil {
		resolved = device
	}
	// Devices stacked on this one (device mapper, md) hold it open too.
	entries, err := os.ReadDir(filepath.Join(m.sysfs, "class", "block", filepath.Base(resolved), "holders"))
	if err == nil {
		for _, e := range entries {
			holders = append(holders, "/dev/"+e.Name())
		}
	}
	return holders, nil
}

// mountPointsOf returns where device is mounted, including bind mounts of
// the device node itself.
func (m *HostMounter) mountPointsOf(device string) ([]string, error) {
	resolved, err := filepath.EvalSymlinks(device)
	if err != nil {
		resolved = filepath.Clean(device)
	}
	major, minor, isBlock := blockDeviceNumbers(resolved)
	infos, err := m.mounts()
	if err != nil {
		return nil, err
	}
	var points []string
	for _, mi := range infos {
		sameDevice := isBlock && mi.Major == major && mi.Minor == minor
		if sameDevice || sourceOf(mi) == resolved {
			points = append(points, mi.MountPoint)
		}
	}
	return points, nil
}

// blockDeviceNumbers returns the major and minor numbers of a block device.
func blockDeviceNumbers(path string) (major, minor int, ok bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
		return 0, 0, false
	}
	rdev := uint64(st.Rdev)
	major = int((rdev>>8)&0xfff | (rdev>>32)&^0xfff)
	minor = int(rdev&0xff | (rdev>>12)&^0xff)
	return major, minor, true
}

func (m *HostMounter) mounts() ([]mountutils.MountInfo, error) {
	infos, err := mountutils.ParseMountInfo(m.mountInfo)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", m.mountInfo, err)
	}
	for i := range infos {
		infos[i].MountPoint = unescapeOctal(infos[i].MountPoint)
		infos[i].Source = unescapeOctal(infos[i].Source)
		infos[i].Root = unescapeOctal(infos[i].Root)
	}
	return infos, nil
}

// unescapeOctal undoes the kernel's \NNN escaping of spaces, tabs,
// newlines and backslashes in mountinfo fields.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// exitCode returns the exit status of a failed command, or -1.
func exitCode(err error) int {
	var ee *util.ExecError
	if errors.As(err, &ee) {
		return ee.ExitCode
	}
	return -1
}
