// Package cephfs serves CephFS shared volumes as subvolumes of the mgr
// volumes module. Volumes (volumes.go) is what the services need from the
// mgr; MgrVolumes implements it with go-ceph's cephfs/admin, FakeVolumes
// in memory. Both pass the same contract test, against a real cluster
// for MgrVolumes.
//
// # The mgr volumes module on Pacific (16.2.15), as observed
//
//   - Creating a subvolume that exists succeeds and applies the new size
//     (when given) and mode (0755 when none is given) to it. Creating one
//     in snapshot-retained state makes a new subvolume, under a new UUID,
//     beside the old snapshots.
//   - A clone that is not complete (pending, in progress, failed,
//     canceled) answers EAGAIN "not ready for operation X" to everything
//     but clone status and cancel; rm needs --force, and a running clone
//     must be canceled first even then. Its source snapshot cannot be
//     removed (EAGAIN "has pending clones", forced or not) until it ends.
//   - Clones take seconds however small: the cloner's first step ended on
//     a 5 s grid in the mgr's log, and while it waits other volumes
//     commands (clone status, clone, ...) waited too, up to 4 s. A clone
//     cancel, even a refused one, took up to 5 s.
//   - A clone gets the snapshot's quota, mode and data, even data over
//     that quota. Snapshot info reports no size on Pacific.
//   - A subvolume removed with retain-snapshots stays listed, in state
//     snapshot-retained, with no path, until its last snapshot is removed;
//     its snapshots can still be cloned.
//   - Shrinking with no_shrink is refused (EINVAL) only below the bytes in
//     use, which the MDS updates lazily.
//   - A snapshot's data is /volumes/GROUP/NAME/.snap/SNAP/UUID, UUID being
//     the subvolume's data directory when the snapshot was taken. Seen from
//     a mount of the subvolume (getpath), it is .snap/_SNAP_INODE, INODE
//     being /volumes/GROUP/NAME's in decimal. The mgr tells snapshot paths
//     only from Ceph 20 (snapshot getpath); subvolume and snapshot
//     metadata need Quincy. go-ceph v0.41.0 sends the source group as a
//     clone's target group and misreads Pacific's clone failure: Clone and
//     CloneStatus send their own commands.
package cephfs
