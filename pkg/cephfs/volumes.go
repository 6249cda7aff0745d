package cephfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Volumes is what the CephFS services need from the mgr volumes module of
// one cluster: subvolume groups, subvolumes with quotas, their snapshots,
// and clones of those snapshots. Every call returns when ctx is done.
//
// The mgr's refusals are *Error values: errors.Is matches ErrNotFound,
// ErrExists, ErrInProgress, ErrHasSnapshots, ErrInvalid, ErrNotSupported
// or ErrTimedOut by the errno the mgr answered with, and ceph.Errno reads
// that errno. A call ctx cut short returns ctx's error, wrapped.
type Volumes interface {
	// FileSystem describes the CephFS named fs.
	FileSystem(ctx context.Context, fs string) (FSInfo, error)
	// FileSystems describes every CephFS of the cluster, ordered by name:
	// what a volume ID's FSCID is looked up in.
	FileSystems(ctx context.Context) ([]FSInfo, error)
	// EnsureGroup creates a subvolume group unless it exists. Concurrent
	// calls for one group all succeed.
	EnsureGroup(ctx context.Context, fs, group string) error

	// CreateSubvolume creates a subvolume. For a subvolume that exists the
	// mgr answers success and applies spec's size and mode to it, and for
	// one in snapshot-retained state it makes a new subvolume beside the
	// retained snapshots: callers that must not change an existing one
	// look at Subvolume first.
	CreateSubvolume(ctx context.Context, sv Subvolume, spec SubvolumeSpec) error
	// Subvolume describes a subvolume; a clone that is not complete is
	// ErrInProgress.
	Subvolume(ctx context.Context, sv Subvolume) (SubvolumeInfo, error)
	// SubvolumePath is the subvolume's path from the filesystem root,
	// /volumes/GROUP/NAME/UUID; ErrInProgress for a clone that is not
	// complete, ErrNotFound in snapshot-retained state.
	SubvolumePath(ctx context.Context, sv Subvolume) (string, error)
	// ListSubvolumes names the subvolumes of a group, snapshot-retained
	// ones and clones in progress included.
	ListSubvolumes(ctx context.Context, fs, group string) ([]string, error)
	// ResizeSubvolume sets the quota to size bytes. It never sets a quota
	// below the bytes in use (ErrInvalid); any other shrink is allowed.
	ResizeSubvolume(ctx context.Context, sv Subvolume, size int64) error
	// RemoveSubvolume removes a subvolume; see RemoveOptions.
	RemoveSubvolume(ctx context.Context, sv Subvolume, opts RemoveOptions) error

	// CreateSnapshot snapshots a subvolume; for a snapshot that exists it
	// answers success and changes nothing.
	CreateSnapshot(ctx context.Context, snap Snapshot) error
	// RemoveSnapshot removes a snapshot: ErrNotFound when there is none,
	// ErrInProgress while clones of it are pending or in progress. The
	// last snapshot of a snapshot-retained subvolume takes the subvolume
	// with it.
	RemoveSnapshot(ctx context.Context, snap Snapshot) error
	// ListSnapshots names the snapshots of a subvolume.
	ListSnapshots(ctx context.Context, sv Subvolume) ([]string, error)
	// Snapshot describes a snapshot.
	Snapshot(ctx context.Context, snap Snapshot) (SnapshotInfo, error)

	// Clone starts an asynchronous copy of a snapshot into a new subvolume
	// target, with the snapshot's quota and mode. pool, when set, is the
	// clone's data pool. ErrExists when target exists.
	Clone(ctx context.Context, snap Snapshot, target Subvolume, pool string) error
	// CloneStatus tells how far a clone is; ErrNotSupported for a
	// subvolume that was not made by Clone.
	CloneStatus(ctx context.Context, target Subvolume) (CloneStatus, error)
	// CancelClone stops a pending or in-progress clone, which stays, in
	// state canceled, until removed with Force.
	CancelClone(ctx context.Context, target Subvolume) error
}

// Subvolume names a subvolume.
type Subvolume struct {
	FS, Group, Name string
}

func (s Subvolume) String() string { return s.FS + "/" + s.Group + "/" + s.Name }

// Snapshot names a snapshot of a subvolume.
type Snapshot struct {
	Subvolume Subvolume
	Name      string
}

func (s Snapshot) String() string { return s.Subvolume.String() + "@" + s.Name }

// FSInfo describes a CephFS.
type FSInfo struct {
	Name string
	// ID is the FSCID (`ceph fs dump`: "Filesystem 'cephfs' (1)"): volume
	// IDs carry it where RBD's carry a pool ID.
	ID             int64
	MetadataPool   string
	MetadataPoolID int64
	DataPools      []string // the first is the default data pool
	DataPoolIDs    []int64
}

// SubvolumeSpec is what CreateSubvolume sets.
type SubvolumeSpec struct {
	Size int64 // quota in bytes; 0 for none
	// Pool is the data pool layout; "" keeps the filesystem's default.
	Pool string
	Mode fs.FileMode // permission bits of the subvolume's root; 0 for the mgr's 0755
}

// SubvolumeState is the state the mgr reports for a subvolume. A clone
// that is not complete has no info at all (ErrInProgress); CloneStatus
// tells its state.
type SubvolumeState string

// States Subvolume reports.
const (
	StateComplete     SubvolumeState = "complete"
	StateSnapRetained SubvolumeState = "snapshot-retained"
)

// SubvolumeInfo describes a subvolume. In snapshot-retained state only
// Type, State and Features are set.
type SubvolumeInfo struct {
	Type  string // "subvolume", or "clone" for one made by Clone
	State SubvolumeState
	Path  string
	// BytesQuota is the quota in bytes, 0 when there is none.
	BytesQuota    int64
	BytesUsed     int64
	DataPool      string
	PoolNamespace string
	Mode          fs.FileMode // permission bits
	UID, GID      int
	Created       time.Time // whole seconds
	Features      []string
}

// RemoveOptions modify RemoveSubvolume.
type RemoveOptions struct {
	// RetainSnapshots removes the subvolume's data but keeps its
	// snapshots: the subvolume stays, in state snapshot-retained, until its
	// last snapshot is removed. Without it a subvolume with snapshots is
	// ErrHasSnapshots.
	RetainSnapshots bool
	// Force makes a missing subvolume a success and removes a clone that
	// failed or was canceled.
	Force bool
}

// SnapshotInfo describes a snapshot. Pacific reports no size for it: the
// subvolume's quota is what a CSI snapshot's size can say.
type SnapshotInfo struct {
	Created          time.Time
	DataPool         string
	HasPendingClones bool
}

// CloneState is how far a clone is.
type CloneState string

// Clone states, as the mgr names them.
const (
	ClonePending    CloneState = "pending"
	CloneInProgress CloneState = "in-progress"
	CloneComplete   CloneState = "complete"
	CloneFailed     CloneState = "failed"
	CloneCanceled   CloneState = "canceled"
)

// Done tells whether the clone will not change state any more.
func (s CloneState) Done() bool {
	return s == CloneComplete || s == CloneFailed || s == CloneCanceled
}

// CloneStatus is a clone's state, and why it failed.
type CloneStatus struct {
	State CloneState
	// Source is the snapshot being copied; the mgr names it only until
	// the clone is complete.
	Source *Snapshot
	// FailureErrno and Failure tell why a failed clone failed.
	FailureErrno syscall.Errno
	Failure      string
}

// Errors a Volumes call may match with errors.Is, by the mgr's errno.
var (
	ErrNotFound     = errors.New("not found")                // ENOENT
	ErrExists       = errors.New("already exists")           // EEXIST
	ErrInProgress   = errors.New("busy with a clone")        // EAGAIN
	ErrHasSnapshots = errors.New("has snapshots")            // ENOTEMPTY
	ErrInvalid      = errors.New("invalid request")          // EINVAL
	ErrNotSupported = errors.New("not supported")            // EOPNOTSUPP, or a command this Ceph lacks
	ErrTimedOut     = errors.New("timed out inside the mgr") // ETIMEDOUT
)

var errnoKinds = map[syscall.Errno]error{
	syscall.ENOENT:     ErrNotFound,
	syscall.EEXIST:     ErrExists,
	syscall.EAGAIN:     ErrInProgress,
	syscall.ENOTEMPTY:  ErrHasSnapshots,
	syscall.EINVAL:     ErrInvalid,
	syscall.EOPNOTSUPP: ErrNotSupported,
	syscall.ETIMEDOUT:  ErrTimedOut,
}

// Error is a failed mgr volumes call: the command, what it acted on, the
// errno and the mgr's own words.
type Error struct {
	Op     string // the mgr command, e.g. "fs subvolume create"
	Target string // e.g. "cephfs/csi/csi-vol-…"
	Errno  syscall.Errno
	Status string // e.g. "subvolume 'csi-vol-…' does not exist"
	// Missing is set when this Ceph release has no such command.
	Missing bool
}

func (e *Error) Error() string {
	msg := e.Status
	if msg == "" {
		msg = e.Errno.Error()
	}
	if e.Missing {
		msg = "this Ceph release does not have this command"
	}
	return fmt.Sprintf("%s %s: %s (%s)", e.Op, e.Target, msg, unix.ErrnoName(e.Errno))
}

// ErrorCode returns the negative errno, as go-ceph errors do, so that
// ceph.Errno and ceph.Code read it.
func (e *Error) ErrorCode() int { return -int(e.Errno) }

// Is matches the sentinel of e's errno.
func (e *Error) Is(target error) bool {
	if e.Missing {
		return target == ErrNotSupported
	}
	kind, ok := errnoKinds[e.Errno]
	return ok && kind == target
}
