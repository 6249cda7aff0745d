package cephfs

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// volumesEnv is what the contract needs besides the Volumes under test.
type volumesEnv struct {
	fs    string
	group string // a group of the test's own, not created yet
	pool  string // the filesystem's default data pool
	// write puts n bytes of data into a subvolume.
	write func(t *testing.T, sv Subvolume, n int64)
	// breakClone makes a clone that is not done fail: it removes the
	// source snapshot behind the mgr's back.
	breakClone func(t *testing.T, snap Snapshot, target Subvolume)
	// sameData, when set, checks that two paths hold the same files.
	sameData func(t *testing.T, want, got string)
	// cloneWait bounds how long one clone may take.
	cloneWait time.Duration
}

const mib = 1 << 20

// testVolumesContract is the behaviour of the Pacific mgr volumes module
// the CephFS services rely on. It runs against MgrVolumes on a real
// cluster and against FakeVolumes, so the fake keeps the real rules.
func testVolumesContract(t *testing.T, v Volumes, env volumesEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := contract{t: t, ctx: ctx, v: v, env: env}
	sv := Subvolume{FS: env.fs, Group: env.group, Name: "sv1"}
	snap := Snapshot{Subvolume: sv, Name: "snap1"}

	t.Run("FileSystem", func(t *testing.T) { c.with(t).fileSystem() })
	t.Run("Group", func(t *testing.T) { c.with(t).group(sv) })
	t.Run("Subvolume", func(t *testing.T) { c.with(t).subvolume(sv) })
	t.Run("Resize", func(t *testing.T) { c.with(t).resize(sv) })
	t.Run("Snapshot", func(t *testing.T) { c.with(t).snapshot(snap) })
	t.Run("Clone", func(t *testing.T) { c.with(t).clone(snap, Subvolume{FS: env.fs, Group: env.group, Name: "clone1"}) })
	t.Run("CancelClone", func(t *testing.T) {
		c.with(t).cancelClone(snap, Subvolume{FS: env.fs, Group: env.group, Name: "clone2"})
	})
	t.Run("FailedClone", func(t *testing.T) {
		c.with(t).failedClone(Subvolume{FS: env.fs, Group: env.group, Name: "sv2"}, Subvolume{FS: env.fs, Group: env.group, Name: "clone3"})
	})
	t.Run("RetainSnapshots", func(t *testing.T) {
		c.with(t).retainSnapshots(snap, Subvolume{FS: env.fs, Group: env.group, Name: "clone4"})
	})
	t.Run("Remove", func(t *testing.T) { c.with(t).remove(Subvolume{FS: env.fs, Group: env.group, Name: "sv3"}) })
}

type contract struct {
	t   *testing.T
	ctx context.Context
	v   Volumes
	env volumesEnv
}

func (c contract) with(t *testing.T) contract { c.t = t; return c }

// is fails unless err matches kind and carries errno.
func (c contract) is(what string, err, kind error, errno syscall.Errno) {
	c.t.Helper()
	if !errors.Is(err, kind) || ceph.Errno(err) != errno {
		c.t.Fatalf("%s: got %v (errno %d), want %v with errno %d", what, err, ceph.Errno(err), kind, errno)
	}
}

func (c contract) ok(what string, err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
}

func (c contract) info(sv Subvolume) SubvolumeInfo {
	c.t.Helper()
	info, err := c.v.Subvolume(c.ctx, sv)
	c.ok("info of "+sv.Name, err)
	return info
}

func (c contract) fileSystem() {
	info, err := c.v.FileSystem(c.ctx, c.env.fs)
	c.ok("FileSystem", err)
	if info.Name != c.env.fs || info.ID < 0 || info.MetadataPool == "" || info.MetadataPoolID < 0 ||
		len(info.DataPools) == 0 || info.DataPools[0] != c.env.pool || len(info.DataPoolIDs) != len(info.DataPools) {
		c.t.Errorf("FileSystem = %+v", info)
	}
	_, err = c.v.FileSystem(c.ctx, "no-such-fs")
	c.is("FileSystem of a missing filesystem", err, ErrNotFound, syscall.ENOENT)
	all, err := c.v.FileSystems(c.ctx)
	c.ok("FileSystems", err)
	if i := slices.IndexFunc(all, func(f FSInfo) bool { return f.ID == info.ID }); i < 0 || all[i].Name != info.Name {
		c.t.Errorf("FileSystems = %+v, without %s (FSCID %d)", all, info.Name, info.ID)
	}
}

func (c contract) group(sv Subvolume) {
	_, err := c.v.ListSubvolumes(c.ctx, c.env.fs, c.env.group)
	c.is("listing a missing group", err, ErrNotFound, syscall.ENOENT)
	err = c.v.CreateSubvolume(c.ctx, sv, SubvolumeSpec{Size: mib})
	c.is("subvolume in a missing group", err, ErrNotFound, syscall.ENOENT)
	err = c.v.EnsureGroup(c.ctx, "no-such-fs", c.env.group)
	c.is("group in a missing filesystem", err, ErrNotFound, syscall.ENOENT)

	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = c.v.EnsureGroup(c.ctx, c.env.fs, c.env.group) })
	}
	wg.Wait()
	c.ok("concurrent EnsureGroup", errors.Join(errs...))
	c.ok("EnsureGroup again", c.v.EnsureGroup(c.ctx, c.env.fs, c.env.group))
	names, err := c.v.ListSubvolumes(c.ctx, c.env.fs, c.env.group)
	c.ok("listing the new group", err)
	if len(names) != 0 {
		c.t.Errorf("new group holds %v", names)
	}
}

func (c contract) subvolume(sv Subvolume) {
	c.ok("CreateSubvolume", c.v.CreateSubvolume(c.ctx, sv, SubvolumeSpec{Size: 8 * mib, Mode: 0o750}))
	info := c.info(sv)
	if info.Type != "subvolume" || info.State != StateComplete || info.BytesQuota != 8*mib || info.BytesUsed != 0 ||
		info.Mode != 0o750 || info.DataPool != c.env.pool || info.Created.IsZero() ||
		path.Dir(info.Path) != "/volumes/"+sv.Group+"/"+sv.Name || len(path.Base(info.Path)) != 36 ||
		!slices.Contains(info.Features, "snapshot-retention") {
		c.t.Errorf("info = %+v", info)
	}
	p, err := c.v.SubvolumePath(c.ctx, sv)
	c.ok("SubvolumePath", err)
	if p != info.Path {
		c.t.Errorf("path %q, info says %q", p, info.Path)
	}

	// Creating it again succeeds and changes it: the new size applies, and
	// the mode falls back to 0755 when none is given.
	c.ok("CreateSubvolume again", c.v.CreateSubvolume(c.ctx, sv, SubvolumeSpec{Size: 16 * mib}))
	if again := c.info(sv); again.BytesQuota != 16*mib || again.Mode != 0o755 || again.Path != info.Path {
		c.t.Errorf("after creating again: %+v", again)
	}
	// Without a size the quota stays.
	c.ok("CreateSubvolume without size", c.v.CreateSubvolume(c.ctx, sv, SubvolumeSpec{Mode: 0o770}))
	if again := c.info(sv); again.BytesQuota != 16*mib || again.Mode != 0o770 {
		c.t.Errorf("after creating without size: %+v", again)
	}

	err = c.v.CreateSubvolume(c.ctx, Subvolume{FS: sv.FS, Group: sv.Group, Name: "badpool"}, SubvolumeSpec{Pool: "no-such-pool"})
	c.is("CreateSubvolume in a missing pool", err, ErrInvalid, syscall.EINVAL)
	missing := Subvolume{FS: sv.FS, Group: sv.Group, Name: "missing"}
	_, err = c.v.Subvolume(c.ctx, missing)
	c.is("info of a missing subvolume", err, ErrNotFound, syscall.ENOENT)
	_, err = c.v.SubvolumePath(c.ctx, missing)
	c.is("path of a missing subvolume", err, ErrNotFound, syscall.ENOENT)
	names, err := c.v.ListSubvolumes(c.ctx, sv.FS, sv.Group)
	c.ok("ListSubvolumes", err)
	if !slices.Equal(names, []string{sv.Name}) {
		c.t.Errorf("ListSubvolumes = %v", names)
	}
}

// waitUsed polls until the subvolume reports at least n bytes in use:
// the MDS propagates usage lazily.
func (c contract) waitUsed(sv Subvolume, n int64) SubvolumeInfo {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info := c.info(sv)
		if info.BytesUsed >= n {
			return info
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s reports %d bytes used, want %d", sv, info.BytesUsed, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c contract) resize(sv Subvolume) {
	c.env.write(c.t, sv, 4*mib)
	c.waitUsed(sv, 4*mib)
	err := c.v.ResizeSubvolume(c.ctx, sv, 2*mib)
	c.is("shrinking below the bytes in use", err, ErrInvalid, syscall.EINVAL)
	c.is("resizing to 0", c.v.ResizeSubvolume(c.ctx, sv, 0), ErrInvalid, syscall.EINVAL)
	c.ok("growing", c.v.ResizeSubvolume(c.ctx, sv, 32*mib))
	if q := c.info(sv).BytesQuota; q != 32*mib {
		c.t.Errorf("quota %d after growing", q)
	}
	c.ok("shrinking above the bytes in use", c.v.ResizeSubvolume(c.ctx, sv, 8*mib))
	if q := c.info(sv).BytesQuota; q != 8*mib {
		c.t.Errorf("quota %d after shrinking", q)
	}
	err = c.v.ResizeSubvolume(c.ctx, Subvolume{FS: sv.FS, Group: sv.Group, Name: "missing"}, mib)
	c.is("resizing a missing subvolume", err, ErrNotFound, syscall.ENOENT)
}

func (c contract) snapshot(snap Snapshot) {
	sv := snap.Subvolume
	c.ok("CreateSnapshot", c.v.CreateSnapshot(c.ctx, snap))
	info, err := c.v.Snapshot(c.ctx, snap)
	c.ok("Snapshot", err)
	if info.HasPendingClones || info.DataPool != c.env.pool || time.Since(info.Created) > time.Hour || time.Until(info.Created) > time.Hour {
		c.t.Errorf("snapshot info = %+v", info)
	}
	// Creating it again is a success that changes nothing.
	c.ok("CreateSnapshot again", c.v.CreateSnapshot(c.ctx, snap))
	if again, err := c.v.Snapshot(c.ctx, snap); err != nil || !again.Created.Equal(info.Created) {
		c.t.Errorf("after creating again: %+v, %v; was %+v", again, err, info)
	}
	names, err := c.v.ListSnapshots(c.ctx, sv)
	c.ok("ListSnapshots", err)
	if !slices.Equal(names, []string{snap.Name}) {
		c.t.Errorf("ListSnapshots = %v", names)
	}
	p, err := SnapshotPath(c.ctx, c.v, snap)
	c.ok("SnapshotPath", err)
	svPath := c.info(sv).Path
	if want := path.Join(path.Dir(svPath), ".snap", snap.Name, path.Base(svPath)); p != want {
		c.t.Errorf("SnapshotPath = %q, want %q", p, want)
	}
	if c.env.sameData != nil {
		c.env.sameData(c.t, svPath, p)
	}

	missing := Snapshot{Subvolume: sv, Name: "missing"}
	_, err = c.v.Snapshot(c.ctx, missing)
	c.is("info of a missing snapshot", err, ErrNotFound, syscall.ENOENT)
	c.is("removing a missing snapshot", c.v.RemoveSnapshot(c.ctx, missing), ErrNotFound, syscall.ENOENT)
	_, err = SnapshotPath(c.ctx, c.v, missing)
	c.is("path of a missing snapshot", err, ErrNotFound, syscall.ENOENT)
	err = c.v.CreateSnapshot(c.ctx, Snapshot{Subvolume: Subvolume{FS: sv.FS, Group: sv.Group, Name: "missing"}, Name: "s"})
	c.is("snapshot of a missing subvolume", err, ErrNotFound, syscall.ENOENT)
	c.is("cloning a missing snapshot", c.v.Clone(c.ctx, missing, Subvolume{FS: sv.FS, Group: sv.Group, Name: "c"}, ""),
		ErrNotFound, syscall.ENOENT)
	_, err = c.v.CloneStatus(c.ctx, sv)
	c.is("clone status of a plain subvolume", err, ErrNotSupported, syscall.EOPNOTSUPP)
	c.is("canceling a plain subvolume", c.v.CancelClone(c.ctx, sv), ErrNotSupported, syscall.EOPNOTSUPP)
	_, err = c.v.CloneStatus(c.ctx, Subvolume{FS: sv.FS, Group: sv.Group, Name: "missing"})
	c.is("clone status of a missing subvolume", err, ErrNotFound, syscall.ENOENT)
}

// cloneStatus reads a clone's status.
func (c contract) cloneStatus(target Subvolume) CloneStatus {
	c.t.Helper()
	st, err := c.v.CloneStatus(c.ctx, target)
	c.ok("CloneStatus", err)
	return st
}

// waitClone polls a clone every 20 ms until it is done.
func (c contract) waitClone(target Subvolume) CloneStatus {
	c.t.Helper()
	deadline := time.Now().Add(c.env.cloneWait)
	for {
		st := c.cloneStatus(target)
		if st.State.Done() {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("clone %s still %s after %v", target, st.State, c.env.cloneWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// errPendingClones stands for a snapshot that has clones pending.
var errPendingClones = errors.New("the snapshot has pending clones")

// raced runs a check whose answer depends on whether a clone is still
// running, which no check can hold still: on a fast cluster the clone
// may finish before the checks or during them. A clone still running
// after the check must have given it the running answer; one done by
// then may have given either, and no other. It returns whether the
// check got the running answer.
func (c contract) raced(target Subvolume, what string, check func() error, running, done func(error) bool) bool {
	c.t.Helper()
	err := check()
	after, statusErr := c.v.CloneStatus(c.ctx, target)
	if statusErr != nil && !errors.Is(statusErr, ErrNotFound) { // not found: a done clone the check removed
		c.t.Fatalf("CloneStatus after %s: %v", what, statusErr)
	}
	switch {
	case running(err):
		return true
	case statusErr == nil && !after.State.Done():
		c.t.Errorf("%s while the clone runs: got %v (errno %d)", what, err, ceph.Errno(err))
	case !done(err):
		c.t.Errorf("%s as the clone finished: got %v (errno %d)", what, err, ceph.Errno(err))
	}
	return false
}

// isErr matches an error of kind with errno.
func isErr(kind error, errno syscall.Errno) func(error) bool {
	return func(err error) bool { return errors.Is(err, kind) && ceph.Errno(err) == errno }
}

func isNil(err error) bool { return err == nil }

// discard removes a clone whatever its state, and its snapshot unless
// nil, so that a check that failed leaves the group to the next ones.
func (c contract) discard(target Subvolume, src *Snapshot) {
	_ = c.v.CancelClone(c.ctx, target)
	for deadline := time.Now().Add(c.env.cloneWait); time.Now().Before(deadline); {
		if st, err := c.v.CloneStatus(c.ctx, target); err != nil || st.State.Done() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{Force: true})
	if src != nil {
		_ = c.v.RemoveSnapshot(c.ctx, *src)
	}
}

// waitNoPendingClones polls until snap has no pending clones: the mgr
// marks a clone complete before it detaches it from its snapshot.
func (c contract) waitNoPendingClones(snap Snapshot) {
	c.t.Helper()
	deadline := time.Now().Add(c.env.cloneWait)
	for {
		info, err := c.v.Snapshot(c.ctx, snap)
		c.ok("Snapshot", err)
		if !info.HasPendingClones {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("snapshot %s still has pending clones %v after its clone was done", snap.Name, c.env.cloneWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clone checks a clone from its start to its end. What a running clone
// answers is checked for as long as it runs (see raced). The checks that
// remove a done clone or its snapshot work on a snapshot of their own,
// and the clone is made again when they removed it.
func (c contract) clone(snap Snapshot, target Subvolume) {
	sv := snap.Subvolume
	before := c.info(sv)
	src := Snapshot{Subvolume: sv, Name: "clone-source"}
	c.ok("CreateSnapshot", c.v.CreateSnapshot(c.ctx, src))
	c.t.Cleanup(func() { c.discard(target, &src) })
	c.ok("Clone", c.v.Clone(c.ctx, src, target, ""))
	switch st := c.cloneStatus(target); st.State {
	case ClonePending, CloneInProgress:
		if st.Source == nil || *st.Source != src {
			c.t.Errorf("status of a new clone = %+v", st)
		}
	case CloneComplete:
		if st.Source != nil {
			c.t.Errorf("status of a new clone, complete already = %+v", st)
		}
	default:
		c.t.Fatalf("status of a new clone = %+v", st)
	}

	inProgress := isErr(ErrInProgress, syscall.EAGAIN)
	pending := func(err error) bool { return err == errPendingClones }
	ran := []bool{
		c.raced(target, "info of the clone", func() error { _, err := c.v.Subvolume(c.ctx, target); return err }, inProgress, isNil),
		c.raced(target, "path of the clone", func() error { _, err := c.v.SubvolumePath(c.ctx, target); return err }, inProgress, isNil),
		// Detached from its snapshot only after it is marked complete: a
		// done clone may still be pending there for a moment.
		c.raced(target, "pending clones of the source snapshot", func() error {
			info, err := c.v.Snapshot(c.ctx, src)
			if err == nil && info.HasPendingClones {
				err = errPendingClones
			}
			return err
		}, pending, func(err error) bool { return err == nil || pending(err) }),
		c.raced(target, "removing the source snapshot", func() error { return c.v.RemoveSnapshot(c.ctx, src) },
			inProgress, func(err error) bool { return err == nil || inProgress(err) }),
		c.raced(target, "creating over the clone", func() error { return c.v.CreateSubvolume(c.ctx, target, SubvolumeSpec{}) },
			inProgress, isNil),
		c.raced(target, "forced removal of the clone", func() error {
			return c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{Force: true})
		}, inProgress, isNil),
	}
	c.t.Logf("the clone was still running at %d of %d checks", len(slices.DeleteFunc(slices.Clone(ran), func(b bool) bool { return !b })), len(ran))
	from := src
	if removed := !ran[len(ran)-1]; removed { // done already: the forced removal removed it; clone again
		if _, err := c.v.Snapshot(c.ctx, src); errors.Is(err, ErrNotFound) {
			from = snap
		}
		c.ok("cloning again", c.v.Clone(c.ctx, from, target, ""))
	}
	c.is("cloning onto the clone", c.v.Clone(c.ctx, from, target, ""), ErrExists, syscall.EEXIST)

	st := c.waitClone(target)
	if st.State != CloneComplete || st.Source != nil || st.FailureErrno != 0 {
		c.t.Fatalf("finished clone: %+v", st)
	}
	info := c.info(target)
	if info.Type != "clone" || info.State != StateComplete || info.BytesQuota != before.BytesQuota ||
		info.BytesUsed != before.BytesUsed || info.Mode != before.Mode || info.DataPool != c.env.pool ||
		path.Dir(info.Path) != "/volumes/"+target.Group+"/"+target.Name {
		c.t.Errorf("clone info = %+v, source %+v", info, before)
	}
	if c.env.sameData != nil {
		c.env.sameData(c.t, before.Path, info.Path)
	}
	c.waitNoPendingClones(from)
	c.is("canceling a finished clone", c.v.CancelClone(c.ctx, target), ErrInvalid, syscall.EINVAL)
	c.is("cloning onto a clone", c.v.Clone(c.ctx, snap, target, ""), ErrExists, syscall.EEXIST)
	c.is("cloning into a missing group", c.v.Clone(c.ctx, snap, Subvolume{FS: sv.FS, Group: "no-such-group", Name: "c"}, ""),
		ErrNotFound, syscall.ENOENT)
	c.is("cloning into a missing pool", c.v.Clone(c.ctx, snap, Subvolume{FS: sv.FS, Group: sv.Group, Name: "c"}, "no-such-pool"),
		ErrInvalid, syscall.EINVAL)
	// A complete clone is a subvolume like any other.
	c.ok("removing the clone", c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{}))
	if err := c.v.RemoveSnapshot(c.ctx, src); err != nil && !errors.Is(err, ErrNotFound) {
		c.t.Errorf("removing the clone's source snapshot: %v", err)
	}
}

// attempts is how many clones a check that needs one not done yet starts
// before it gives up: a fast mgr may finish one before the check.
const attempts = 3

func (c contract) cancelClone(snap Snapshot, target Subvolume) {
	for i := 1; ; i++ {
		try := Subvolume{FS: target.FS, Group: target.Group, Name: fmt.Sprintf("%s-%d", target.Name, i)}
		c.ok("Clone", c.v.Clone(c.ctx, snap, try, ""))
		err := c.v.CancelClone(c.ctx, try)
		if errors.Is(err, ErrInvalid) && c.cloneStatus(try).State == CloneComplete && i < attempts {
			c.t.Logf("clone %s was done before the cancel; another", try.Name)
			c.waitNoPendingClones(snap)
			c.ok("removing it", c.v.RemoveSubvolume(c.ctx, try, RemoveOptions{}))
			continue
		}
		c.t.Cleanup(func() { c.discard(try, nil) })
		c.ok("CancelClone", err)
		c.canceled(snap, try)
		return
	}
}

// canceled checks a clone canceled before it was done.
func (c contract) canceled(snap Snapshot, target Subvolume) {
	st := c.waitClone(target)
	if st.State != CloneCanceled || st.FailureErrno != syscall.EINTR || st.Failure == "" || st.Source == nil {
		c.t.Errorf("canceled clone: %+v", st)
	}
	c.is("canceling it again", c.v.CancelClone(c.ctx, target), ErrInvalid, syscall.EINVAL)
	_, err := c.v.Subvolume(c.ctx, target)
	c.is("info of a canceled clone", err, ErrInProgress, syscall.EAGAIN)
	if info, err := c.v.Snapshot(c.ctx, snap); err != nil || info.HasPendingClones {
		c.t.Errorf("source snapshot after the cancel: %+v, %v", info, err)
	}
	c.is("removing a canceled clone without force", c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{}), ErrInProgress, syscall.EAGAIN)
	c.ok("removing a canceled clone with force", c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{Force: true}))
	_, err = c.v.CloneStatus(c.ctx, target)
	c.is("status of a removed clone", err, ErrNotFound, syscall.ENOENT)
}

func (c contract) failedClone(source, target Subvolume) {
	c.ok("CreateSubvolume", c.v.CreateSubvolume(c.ctx, source, SubvolumeSpec{Size: 16 * mib}))
	c.env.write(c.t, source, 8*mib)
	var st CloneStatus
	for i := 1; ; i++ {
		snap := Snapshot{Subvolume: source, Name: fmt.Sprintf("doomed-%d", i)}
		try := Subvolume{FS: target.FS, Group: target.Group, Name: fmt.Sprintf("%s-%d", target.Name, i)}
		c.ok("CreateSnapshot", c.v.CreateSnapshot(c.ctx, snap))
		c.ok("Clone", c.v.Clone(c.ctx, snap, try, ""))
		c.t.Cleanup(func() { c.discard(try, &snap) })
		c.env.breakClone(c.t, snap, try)
		if st = c.waitClone(try); st.State == CloneComplete && i < attempts {
			c.t.Logf("clone %s was done before its snapshot went; another", try.Name)
			c.ok("removing it", c.v.RemoveSubvolume(c.ctx, try, RemoveOptions{}))
			continue
		}
		target = try
		break
	}
	if st.State != CloneFailed || st.FailureErrno == 0 || st.Failure == "" {
		c.t.Fatalf("clone of a vanished snapshot: %+v", st)
	}
	c.t.Logf("failed clone: errno %d, %q", st.FailureErrno, st.Failure)
	c.is("removing a failed clone without force", c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{}), ErrInProgress, syscall.EAGAIN)
	c.ok("removing a failed clone with force", c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{Force: true}))
	names, err := c.v.ListSnapshots(c.ctx, source)
	c.ok("ListSnapshots of the source", err)
	if len(names) != 0 {
		c.t.Errorf("source still lists snapshots %v", names)
	}
	c.ok("removing the source", c.v.RemoveSubvolume(c.ctx, source, RemoveOptions{}))
}

func (c contract) retainSnapshots(snap Snapshot, target Subvolume) {
	sv := snap.Subvolume
	c.is("removing a subvolume with snapshots", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{}), ErrHasSnapshots, syscall.ENOTEMPTY)
	c.ok("removing it retaining snapshots", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{RetainSnapshots: true}))
	info := c.info(sv)
	if info.State != StateSnapRetained || info.Path != "" || info.BytesQuota != 0 {
		c.t.Errorf("retained subvolume info = %+v", info)
	}
	_, err := c.v.SubvolumePath(c.ctx, sv)
	c.is("path of a retained subvolume", err, ErrNotFound, syscall.ENOENT)
	_, err = SnapshotPath(c.ctx, c.v, snap)
	c.is("snapshot path of a retained subvolume", err, ErrNotFound, syscall.ENOENT)
	c.is("resizing a retained subvolume", c.v.ResizeSubvolume(c.ctx, sv, 64*mib), ErrNotFound, syscall.ENOENT)
	c.is("snapshotting a retained subvolume", c.v.CreateSnapshot(c.ctx, Snapshot{Subvolume: sv, Name: "s2"}), ErrNotFound, syscall.ENOENT)
	c.is("removing it again without retaining", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{}), ErrHasSnapshots, syscall.ENOTEMPTY)
	c.ok("removing it again retaining", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{RetainSnapshots: true}))
	if names, err := c.v.ListSnapshots(c.ctx, sv); err != nil || !slices.Equal(names, []string{snap.Name}) {
		c.t.Errorf("snapshots of the retained subvolume: %v, %v", names, err)
	}
	if names, err := c.v.ListSubvolumes(c.ctx, sv.FS, sv.Group); err != nil || !slices.Contains(names, sv.Name) {
		c.t.Errorf("ListSubvolumes = %v, %v; want the retained %s", names, err, sv.Name)
	}
	if snapInfo, err := c.v.Snapshot(c.ctx, snap); err != nil || snapInfo.DataPool != c.env.pool {
		c.t.Errorf("snapshot of the retained subvolume: %+v, %v", snapInfo, err)
	}

	// Its snapshots can still be cloned: a volume restored from a
	// snapshot whose volume is gone.
	c.ok("cloning a retained snapshot", c.v.Clone(c.ctx, snap, target, ""))
	if st := c.waitClone(target); st.State != CloneComplete {
		c.t.Fatalf("clone of a retained snapshot: %+v", st)
	}
	if info := c.info(target); info.BytesUsed != 4*mib {
		c.t.Errorf("clone of a retained snapshot: %+v", info)
	}
	c.ok("removing that clone", c.v.RemoveSubvolume(c.ctx, target, RemoveOptions{}))

	// Creating it again makes a new subvolume beside the old snapshots,
	// whose data the new path does not lead to.
	snapInfo, err := c.v.Snapshot(c.ctx, snap)
	c.ok("Snapshot", err)
	for time.Now().Truncate(time.Second).Equal(snapInfo.Created.Truncate(time.Second)) {
		time.Sleep(10 * time.Millisecond) // SnapshotPath tells the two apart by the second
	}
	c.ok("creating a retained subvolume again", c.v.CreateSubvolume(c.ctx, sv, SubvolumeSpec{Size: mib}))
	again := c.info(sv)
	if again.State != StateComplete || again.Path == "" || again.BytesUsed != 0 || again.BytesQuota != mib {
		c.t.Errorf("recreated subvolume: %+v", again)
	}
	_, err = SnapshotPath(c.ctx, c.v, snap)
	c.is("path of a snapshot of the earlier subvolume", err, ErrNotFound, syscall.ENOENT)
	if names, err := c.v.ListSnapshots(c.ctx, sv); err != nil || !slices.Equal(names, []string{snap.Name}) {
		c.t.Errorf("snapshots of the recreated subvolume: %v, %v", names, err)
	}

	// Retained again, its last snapshot takes it along: at once, or, while
	// the purge of the recreated subvolume's data is still pending, once
	// the purge job gets to it.
	c.ok("retaining again", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{RetainSnapshots: true}))
	c.ok("removing the last snapshot", c.v.RemoveSnapshot(c.ctx, snap))
	for deadline := time.Now().Add(c.env.cloneWait); ; time.Sleep(20 * time.Millisecond) {
		info, err := c.v.Subvolume(c.ctx, sv)
		if errors.Is(err, ErrNotFound) {
			c.is("info after the last snapshot went", err, ErrNotFound, syscall.ENOENT)
			break
		}
		if err != nil || info.State != StateSnapRetained || time.Now().After(deadline) {
			c.t.Fatalf("info after the last snapshot went: %+v, %v; want it gone within %v", info, err, c.env.cloneWait)
		}
	}
}

func (c contract) remove(sv Subvolume) {
	c.is("removing a missing subvolume", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{}), ErrNotFound, syscall.ENOENT)
	c.ok("forced removal of a missing subvolume", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{Force: true}))
	c.ok("CreateSubvolume", c.v.CreateSubvolume(c.ctx, sv, SubvolumeSpec{}))
	if info := c.info(sv); info.BytesQuota != 0 {
		c.t.Errorf("subvolume without size has quota %d", info.BytesQuota)
	}
	// Retaining snapshots of a subvolume that has none removes it.
	c.ok("removing retaining no snapshots", c.v.RemoveSubvolume(c.ctx, sv, RemoveOptions{RetainSnapshots: true}))
	_, err := c.v.Subvolume(c.ctx, sv)
	c.is("info after removal", err, ErrNotFound, syscall.ENOENT)
	names, err := c.v.ListSubvolumes(c.ctx, sv.FS, sv.Group)
	c.ok("ListSubvolumes", err)
	if slices.Contains(names, sv.Name) {
		c.t.Errorf("%s removed, yet listed: %v", sv.Name, names)
	}
}
