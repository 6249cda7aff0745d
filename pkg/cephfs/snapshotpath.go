package cephfs

import (
	"context"
	"fmt"
	"path"
	"syscall"
)

// SnapshotPath is where a snapshot's data is seen from the filesystem
// root, /volumes/GROUP/NAME/.snap/SNAP/UUID, for a volume that shows a
// snapshot read-only instead of copying it. The mgr does not tell it on
// Pacific: a snapshot of subvolume NAME is a snapshot of
// /volumes/GROUP/NAME and holds the UUID directory that was the
// subvolume's data when it was taken, which the subvolume's path still
// names while the subvolume is the one the snapshot was taken of. So it is
// ErrNotFound when the subvolume is in snapshot-retained state, or was
// created after the snapshot (anew, beside the snapshots of an earlier
// subvolume of the same name).
func SnapshotPath(ctx context.Context, v Volumes, snap Snapshot) (string, error) {
	sub, err := v.Subvolume(ctx, snap.Subvolume)
	if err != nil {
		return "", err
	}
	info, err := v.Snapshot(ctx, snap)
	if err != nil {
		return "", err
	}
	return snapshotPath(snap, sub, info)
}

func snapshotPath(snap Snapshot, sub SubvolumeInfo, info SnapshotInfo) (string, error) {
	if sub.State == StateSnapRetained || sub.Path == "" {
		return "", &Error{Op: "fs subvolume info", Target: snap.String(), Errno: syscall.ENOENT,
			Status: fmt.Sprintf("subvolume '%s' is removed and has only snapshots retained", snap.Subvolume.Name)}
	}
	// sub.Created has whole seconds; only a snapshot older than that
	// second is certainly of an earlier subvolume.
	if info.Created.Before(sub.Created) {
		return "", &Error{Op: "fs subvolume snapshot info", Target: snap.String(), Errno: syscall.ENOENT,
			Status: fmt.Sprintf("snapshot '%s' was taken of an earlier subvolume '%s'", snap.Name, snap.Subvolume.Name)}
	}
	return path.Join(path.Dir(sub.Path), ".snap", snap.Name, path.Base(sub.Path)), nil
}
