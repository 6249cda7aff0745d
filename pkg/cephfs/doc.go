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
//
// # ceph-fuse on a node (TestCephFuseFacts checks these)
//
// A subvolume mounts with
//
//	ceph-fuse -c /dev/null -m MON --id USER --keyfile KEYFILE -r PATH --admin-socket DIR/client.asok --log-file DIR/ceph-fuse.log MNT
//
// where PATH is the subvolume's path (getpath):
//
//   - KEYFILE holds the bare base64 key (mode 0600); the key never shows in
//     the command line, and the file can be removed once ceph-fuse has
//     returned. -c /dev/null keeps /etc/ceph out of it; without
//     --admin-socket and --log-file it writes
//     /var/run/ceph/ceph-client.USER.PID.*.asok and
//     /var/log/ceph/ceph-client.USER.log.
//   - ceph-fuse returns once MNT is mounted and serves it as a daemon
//     (allow_other set); it prints its progress on stderr. A PATH that does
//     not exist fails with "ceph mount failed with (2) No such file or
//     directory", and so does any PATH inside .snap: a read-only view of a
//     snapshot mounts the subvolume's directory (/volumes/GROUP/NAME) and
//     binds .snap/SNAP/UUID below it, where writes fail with EROFS.
//   - statfs reports the quota as the size. Writes past the quota fail with
//     EDQUOT, but late: the client judges by the usage the MDS last sent
//     it, so megabytes may pass first (4.1-8.5 MiB written into 4 MiB).
//   - umount MNT unmounts (fusermount3 is installed too, from fuse3), and
//     ceph-fuse exits within about 2 s; umount of a busy mount fails
//     (target is busy) and leaves it serving.
//   - A ceph-fuse that died leaves MNT mounted, answering ENOTCONN (or
//     ECONNABORTED at first); umount clears it. Its MDS session and caps
//     outlive it until they time out (60 s) or the client is evicted:
//     meanwhile a removal of its subvolume waits (a create in its group
//     waited 54 s), and holds up every mgr volumes command behind it.
package cephfs
