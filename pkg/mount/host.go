package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	var args []string
	switch fstype {
	case "ext2", "ext3", "ext4":
		// -F: mkfs.ext* otherwise asks before formatting a whole disk.
		args = append([]string{"-F"}, options...)
	case "xfs":
		// No -f: mkfs.xfs then refuses to overwrite a filesystem, a second guard.
		args = append(args, options...)
	default:
		return fmt.Errorf("%w %q: can format ext2, ext3, ext4 and xfs", ErrUnsupportedFilesystem, fstype)
	}
	fsType, ptType, err := m.probe(ctx, device)
	if err != nil {
		return err
	}
	if fsType != "" || ptType != "" {
		return fmt.Errorf("%w: %s holds %s; refusing to format it", ErrDeviceNotEmpty, device, describeContent(fsType, ptType))
	}
	if _, err := m.runner.Run(ctx, "mkfs."+fstype, append(args, device)...); err != nil {
		return fmt.Errorf("formatting %s as %s: %w", device, fstype, err)
	}
	return nil
}

func describeContent(fsType, ptType string) string {
	if fsType != "" {
		return "a " + fsType + " filesystem"
	}
	return "a " + ptType + " partition table"
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

// Unmount implements Mounter.
func (m *HostMounter) Unmount(ctx context.Context, target string) error {
	mounted, err := m.IsMountPoint(ctx, target)
	if err != nil {
		return err
	}
	if !mounted {
		return nil
	}
	if _, err := m.runner.Run(ctx, "umount", target); err != nil {
		// Someone else may have unmounted it meanwhile.
		if still, cerr := m.IsMountPoint(ctx, target); cerr == nil && !still {
			return nil
		}
		return fmt.Errorf("unmounting %s: %w", target, err)
	}
	return nil
}

// IsMountPoint implements Mounter. A dead FUSE or network mount counts as
// mounted, so that Unmount still removes it.
func (m *HostMounter) IsMountPoint(_ context.Context, path string) (bool, error) {
	resolved, err := resolvePath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if mountutils.IsCorruptedMnt(err) {
			return true, nil
		}
		return false, err
	}
	infos, err := m.mounts()
	if err != nil {
		return false, err
	}
	for _, mi := range infos {
		if mi.MountPoint == resolved {
			return true, nil
		}
	}
	return false, nil
}

// MountSource implements Mounter.
func (m *HostMounter) MountSource(_ context.Context, path string) (string, error) {
	resolved, err := resolvePath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	infos, err := m.mounts()
	if err != nil {
		return "", err
	}
	source := ""
	// Later lines are mounted on top of earlier ones: the last one is visible.
	for _, mi := range infos {
		if mi.MountPoint == resolved {
			source = sourceOf(mi)
		}
	}
	return source, nil
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

// Stats implements Mounter.
func (m *HostMounter) Stats(path string) (VolumeStats, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return VolumeStats{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	return statsFrom(st), nil
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

// resolvePath makes path absolute and resolves symlinks, as mountinfo
// lists mount points.
func resolvePath(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if _, err := os.Lstat(abs); err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// exitCode returns the exit status of a failed command, or -1.
func exitCode(err error) int {
	var ee *util.ExecError
	if errors.As(err, &ee) {
		return ee.ExitCode
	}
	return -1
}
