// Package mount holds the node's filesystem side effects: probing and
// formatting block devices, mounting, bind mounting, resizing and
// statistics. Every host command goes through a util.Runner, so every call
// has a deadline and tests can fake the host.
package mount

import (
	"context"
	"errors"
	"fmt"
)

// Mounter is every filesystem operation the node service performs.
type Mounter interface {
	// GetFormat returns the filesystem type on device, "" when there is none.
	GetFormat(ctx context.Context, device string) (string, error)
	// Format makes a filesystem of fstype on device. It refuses a device
	// that already holds a filesystem or a partition table with a
	// *NotEmptyError, which says what it found: probing once, it is also
	// how a caller learns the filesystem of a device it may format.
	Format(ctx context.Context, device, fstype string, options []string) error
	// FormatBlank is Format without the probe, for a device its caller
	// knows to read as zeroes wherever a probe would look: it formats
	// whatever the device holds.
	FormatBlank(ctx context.Context, device, fstype string, options []string) error
	Mount(ctx context.Context, source, target, fstype string, options []string) error
	// BindMount binds source onto target, read-only when asked. A block
	// device bound read-only cannot be written through target.
	BindMount(ctx context.Context, source, target string, readOnly bool) error
	// Unmount unmounts target; a target that is not mounted is success.
	Unmount(ctx context.Context, target string) error
	// Detach unmounts target even while it is in use (a lazy unmount). It
	// is for a mount whose device is gone: nothing reaches the volume
	// through it any more, and processes holding files there keep getting
	// I/O errors until they close them.
	Detach(ctx context.Context, target string) error
	// IsMountPoint reports whether something is mounted at path. It reads
	// the mount table and never blocks on the filesystem mounted there.
	IsMountPoint(ctx context.Context, path string) (bool, error)
	// MountSource returns what is mounted at path, "" if nothing is.
	MountSource(ctx context.Context, path string) (string, error)
	// ResizeFS grows the filesystem on device to the device size. xfs can
	// only grow while mounted, so it needs mountPath.
	ResizeFS(ctx context.Context, device, mountPath string) error
	// DeviceSize returns the size of a block device in bytes.
	DeviceSize(ctx context.Context, device string) (int64, error)
	// FilesystemSize returns the size the fstype filesystem on device
	// believes it has, from its superblock.
	FilesystemSize(ctx context.Context, device, fstype string) (int64, error)
	// Stats returns capacity and inode usage of the filesystem holding path.
	// It returns at ctx's deadline even if the filesystem does not answer.
	Stats(ctx context.Context, path string) (VolumeStats, error)
	// Holders names what holds device open: its mount points and the
	// devices stacked on it. It is for "device busy" messages.
	Holders(ctx context.Context, device string) ([]string, error)
}

// VolumeStats is the usage of one mounted filesystem.
type VolumeStats struct {
	TotalBytes     int64
	UsedBytes      int64
	AvailableBytes int64
	TotalInodes    int64
	UsedInodes     int64
	FreeInodes     int64
}

var (
	// ErrOnlineResizeNotPermitted is returned when resize2fs cannot grow a
	// mounted ext filesystem because the process lacks CAP_SYS_RESOURCE.
	// The filesystem grows once the volume is unstaged and staged again.
	ErrOnlineResizeNotPermitted = errors.New("online resize of ext filesystem not permitted (needs CAP_SYS_RESOURCE)")
	// ErrDeviceNotEmpty is returned by Format for a device that already
	// holds a filesystem or a partition table.
	ErrDeviceNotEmpty = errors.New("device is not empty")
	// ErrUnsupportedFilesystem is returned for a filesystem type the driver
	// cannot format or resize.
	ErrUnsupportedFilesystem = errors.New("unsupported filesystem type")
)

// NotEmptyError is Format's refusal of a device that holds something: a
// filesystem (FSType) or a partition table (PTType).
type NotEmptyError struct {
	Device, FSType, PTType string
}

func (e *NotEmptyError) Error() string {
	what := "a " + e.FSType + " filesystem"
	if e.FSType == "" {
		what = "a " + e.PTType + " partition table"
	}
	return fmt.Sprintf("%s: %s holds %s; refusing to format it", ErrDeviceNotEmpty, e.Device, what)
}

// Unwrap lets errors.Is(err, ErrDeviceNotEmpty) match.
func (e *NotEmptyError) Unwrap() error { return ErrDeviceNotEmpty }
