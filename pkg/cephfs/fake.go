package cephfs

// FakeVolumes is an in-memory Volumes for the tests of the CephFS services.
// It keeps the rules of the Pacific mgr volumes module, each one observed
// on a real cluster and checked against it by the same contract test
// (volumes_contract_test.go) that checks MgrVolumes; the comment on each
// rule says what the mgr does.

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sync"
	"syscall"
	"time"
)

// FakeVolumes holds filesystems, groups, subvolumes, snapshots and clones.
type FakeVolumes struct {
	// CloneSteps is how many CloneStatus answers a clone gives before it is
	// complete: the first says pending, the others in-progress. Default 2.
	CloneSteps int

	mu       sync.Mutex
	fss      map[string]*fakeFS
	calls    map[string]int
	failNext map[string]error
	uuids    int
}

type fakeFS struct {
	info   FSInfo
	groups map[string]map[string]*fakeSubvolume
}

type fakeSubvolume struct {
	info      SubvolumeInfo // Path is "" in snapshot-retained state
	snapshots map[string]*fakeSnapshot
	clone     *fakeClone // nil unless made by Clone
}

type fakeSnapshot struct {
	created time.Time
	// What a clone of the snapshot gets, and where its data is.
	quota, used int64
	mode        fs.FileMode
	pool, path  string
	pending     map[Subvolume]bool // clones pending or in progress
}

type fakeClone struct {
	source  Snapshot
	state   CloneState
	answers int
	errno   syscall.Errno
	failure string
	failAt  *fakeFailure // set by FailClone
}

type fakeFailure struct {
	errno syscall.Errno
	msg   string
}

// NewFakeVolumes serves the given filesystems, with no groups yet.
func NewFakeVolumes(filesystems ...FSInfo) *FakeVolumes {
	f := &FakeVolumes{fss: map[string]*fakeFS{}, calls: map[string]int{}, failNext: map[string]error{}}
	for _, info := range filesystems {
		f.fss[info.Name] = &fakeFS{info: info, groups: map[string]map[string]*fakeSubvolume{}}
	}
	return f
}

// FailNext makes the next call of the named method (e.g. "Clone") fail
// with err, before it changes anything.
func (f *FakeVolumes) FailNext(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext[method] = err
}

// Calls returns how many times the named method was called.
func (f *FakeVolumes) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// SetUsed sets a subvolume's bytes in use, as writing data would.
func (f *FakeVolumes) SetUsed(sv Subvolume, bytes int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.ready(sv, "set-used")
	if err != nil {
		return err
	}
	s.info.BytesUsed = bytes
	return nil
}

// FailClone makes a clone that is not done fail at its next CloneStatus,
// as the mgr's cloner does when it cannot copy (e.g. the snapshot was
// removed behind the mgr's back: errno ENOENT).
func (f *FakeVolumes) FailClone(target Subvolume, errno syscall.Errno, msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.subvolume(target)
	if err != nil {
		return err
	}
	if s.clone == nil || s.clone.state.Done() {
		return fmt.Errorf("%s is not a clone in progress", target)
	}
	s.clone.failAt = &fakeFailure{errno, msg}
	return nil
}

// begin counts a call and returns the failure FailNext set for it.
func (f *FakeVolumes) begin(method string) error {
	f.calls[method]++
	err := f.failNext[method]
	delete(f.failNext, method)
	return err
}

func fakeErr(op, target string, errno syscall.Errno, format string, args ...any) error {
	return &Error{Op: op, Target: target, Errno: errno, Status: fmt.Sprintf(format, args...)}
}

func (f *FakeVolumes) group(fsName, group string) (map[string]*fakeSubvolume, error) {
	fsys, ok := f.fss[fsName]
	if !ok {
		return nil, fakeErr("", fsName, syscall.ENOENT, "volume '%s' does not exist", fsName)
	}
	g, ok := fsys.groups[group]
	if !ok {
		return nil, fakeErr("", fsName+"/"+group, syscall.ENOENT, "subvolume group '%s' does not exist", group)
	}
	return g, nil
}

func (f *FakeVolumes) subvolume(sv Subvolume) (*fakeSubvolume, error) {
	g, err := f.group(sv.FS, sv.Group)
	if err != nil {
		return nil, err
	}
	s, ok := g[sv.Name]
	if !ok {
		return nil, fakeErr("", sv.String(), syscall.ENOENT, "subvolume '%s' does not exist", sv.Name)
	}
	return s, nil
}

var retainedOps = map[string]bool{"snap-ls": true, "snap-rm": true, "snap-info": true, "clone-source": true}

// ready finds a subvolume an operation needs with its data.
func (f *FakeVolumes) ready(sv Subvolume, op string) (*fakeSubvolume, error) {
	s, err := f.subvolume(sv)
	if err != nil {
		return nil, err
	}
	// A clone that is not complete (failed and canceled ones too) answers
	// EAGAIN "not ready for operation X" to everything but status,
	// cancel and a forced rm.
	if s.clone != nil && s.clone.state != CloneComplete {
		return nil, fakeErr("", sv.String(), syscall.EAGAIN, "subvolume '%s' is not ready for operation %s", sv.Name, op)
	}
	// A removed subvolume with retained snapshots has no data: ENOENT,
	// but its snapshots can be listed, read, cloned and removed.
	if s.info.State == StateSnapRetained && !retainedOps[op] {
		return nil, fakeErr("", sv.String(), syscall.ENOENT, "subvolume '%s' is removed and has only snapshots retained", sv.Name)
	}
	return s, nil
}

// named fills in the command and target of an error from a lookup.
func named(err error, op, target string) error {
	if e, ok := err.(*Error); ok {
		e2 := *e
		e2.Op, e2.Target = op, target
		return &e2
	}
	return err
}

func (f *FakeVolumes) FileSystem(_ context.Context, name string) (FSInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("FileSystem"); err != nil {
		return FSInfo{}, err
	}
	fsys, ok := f.fss[name]
	if !ok {
		return FSInfo{}, fakeErr("fs ls", name, syscall.ENOENT, "filesystem '%s' does not exist", name)
	}
	return fsys.copyInfo(), nil
}

func (fsys *fakeFS) copyInfo() FSInfo {
	info := fsys.info
	info.DataPools = slices.Clone(info.DataPools)
	info.DataPoolIDs = slices.Clone(info.DataPoolIDs)
	return info
}

func (f *FakeVolumes) FileSystems(context.Context) ([]FSInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("FileSystems"); err != nil {
		return nil, err
	}
	out := make([]FSInfo, 0, len(f.fss))
	for _, name := range slices.Sorted(maps.Keys(f.fss)) {
		out = append(out, f.fss[name].copyInfo())
	}
	return out, nil
}

func (f *FakeVolumes) EnsureGroup(_ context.Context, fsName, group string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("EnsureGroup"); err != nil {
		return err
	}
	fsys, ok := f.fss[fsName]
	if !ok {
		return fakeErr("fs subvolumegroup create", fsName+"/"+group, syscall.ENOENT, "volume '%s' does not exist", fsName)
	}
	// The mgr answers success for a group that exists.
	if _, ok := fsys.groups[group]; !ok {
		fsys.groups[group] = map[string]*fakeSubvolume{}
	}
	return nil
}

func (f *FakeVolumes) newPath(sv Subvolume) string {
	f.uuids++
	return fmt.Sprintf("/volumes/%s/%s/00000000-0000-4000-8000-%012d", sv.Group, sv.Name, f.uuids)
}

func (f *FakeVolumes) checkPool(fsName, pool string) (string, bool) {
	pools := f.fss[fsName].info.DataPools
	if pool == "" && len(pools) > 0 {
		return pools[0], true
	}
	return pool, slices.Contains(pools, pool)
}

func (f *FakeVolumes) CreateSubvolume(_ context.Context, sv Subvolume, spec SubvolumeSpec) error {
	const op = "fs subvolume create"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("CreateSubvolume"); err != nil {
		return err
	}
	g, err := f.group(sv.FS, sv.Group)
	if err != nil {
		return named(err, op, sv.String())
	}
	pool, ok := f.checkPool(sv.FS, spec.Pool)
	if !ok {
		return fakeErr(op, sv.String(), syscall.EINVAL, "invalid pool layout '%s' -- need a valid data pool", spec.Pool)
	}
	if spec.Size < 0 {
		return fakeErr(op, sv.String(), syscall.EINVAL, "negative size")
	}
	// Without a mode the mgr applies 0755, to an existing subvolume too.
	mode := spec.Mode.Perm()
	if mode == 0 {
		mode = 0o755
	}
	s, exists := g[sv.Name]
	switch {
	case exists && s.clone != nil && s.clone.state != CloneComplete:
		return fakeErr(op, sv.String(), syscall.EAGAIN, "subvolume '%s' is not ready for operation create", sv.Name)
	case exists && s.info.State == StateComplete:
		// Idempotent: success, and the size (when given) and mode apply.
		if spec.Size > 0 {
			s.info.BytesQuota = spec.Size
		}
		s.info.Mode = mode
		return nil
	case !exists:
		s = &fakeSubvolume{snapshots: map[string]*fakeSnapshot{}}
		g[sv.Name] = s
	}
	// New, or a snapshot-retained one made anew under a new UUID beside its
	// old snapshots.
	s.info = SubvolumeInfo{Type: "subvolume", State: StateComplete, Path: f.newPath(sv), BytesQuota: spec.Size,
		DataPool: pool, Mode: mode, Created: time.Now().Truncate(time.Second), Features: fakeFeatures()}
	return nil
}

func fakeFeatures() []string {
	return []string{"snapshot-clone", "snapshot-autoprotect", "snapshot-retention"}
}

func (f *FakeVolumes) Subvolume(_ context.Context, sv Subvolume) (SubvolumeInfo, error) {
	const op = "fs subvolume info"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("Subvolume"); err != nil {
		return SubvolumeInfo{}, err
	}
	s, err := f.subvolume(sv)
	if err == nil && s.info.State != StateSnapRetained {
		s, err = f.ready(sv, "info")
	}
	if err != nil {
		return SubvolumeInfo{}, named(err, op, sv.String())
	}
	if s.info.State == StateSnapRetained {
		// Info of a retained subvolume says only that.
		return SubvolumeInfo{Type: s.info.Type, State: StateSnapRetained, Features: fakeFeatures()}, nil
	}
	info := s.info
	info.Features = slices.Clone(info.Features)
	return info, nil
}

func (f *FakeVolumes) SubvolumePath(_ context.Context, sv Subvolume) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("SubvolumePath"); err != nil {
		return "", err
	}
	s, err := f.ready(sv, "getpath")
	if err != nil {
		return "", named(err, "fs subvolume getpath", sv.String())
	}
	return s.info.Path, nil
}

func (f *FakeVolumes) ListSubvolumes(_ context.Context, fsName, group string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ListSubvolumes"); err != nil {
		return nil, err
	}
	g, err := f.group(fsName, group)
	if err != nil {
		return nil, named(err, "fs subvolume ls", fsName+"/"+group)
	}
	return slices.Sorted(maps.Keys(g)), nil
}

func (f *FakeVolumes) ResizeSubvolume(_ context.Context, sv Subvolume, size int64) error {
	const op = "fs subvolume resize"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ResizeSubvolume"); err != nil {
		return err
	}
	s, err := f.ready(sv, "resize")
	if err != nil {
		return named(err, op, sv.String())
	}
	if size <= 0 {
		return fakeErr(op, sv.String(), syscall.EINVAL, "Invalid subvolume size")
	}
	// no_shrink refuses a quota below the bytes in use, and nothing else.
	if size < s.info.BytesUsed {
		return fakeErr(op, sv.String(), syscall.EINVAL,
			"Can't resize the subvolume. The new size '%d' would be lesser than the current used size '%d'", size, s.info.BytesUsed)
	}
	s.info.BytesQuota = size
	return nil
}

func (f *FakeVolumes) RemoveSubvolume(_ context.Context, sv Subvolume, opts RemoveOptions) error {
	const op = "fs subvolume rm"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("RemoveSubvolume"); err != nil {
		return err
	}
	g, err := f.group(sv.FS, sv.Group)
	if err != nil {
		return named(err, op, sv.String())
	}
	s, ok := g[sv.Name]
	switch {
	case !ok && opts.Force: // force: a missing subvolume is a success
		return nil
	case !ok:
		return fakeErr(op, sv.String(), syscall.ENOENT, "subvolume '%s' does not exist", sv.Name)
	case s.clone != nil && !s.clone.state.Done():
		// Even forced: a running clone must be canceled first.
		if opts.Force {
			return fakeErr(op, sv.String(), syscall.EAGAIN, "%s clone in-progress -- please cancel the clone and retry", sv.Name)
		}
		return fakeErr(op, sv.String(), syscall.EAGAIN, "subvolume '%s' is not ready for operation rm (use --force to override)", sv.Name)
	case s.clone != nil && s.clone.state != CloneComplete && !opts.Force:
		// A failed or canceled clone goes only with force.
		return fakeErr(op, sv.String(), syscall.EAGAIN, "subvolume '%s' is not ready for operation rm (use --force to override)", sv.Name)
	case len(s.snapshots) > 0 && !opts.RetainSnapshots:
		return fakeErr(op, sv.String(), syscall.ENOTEMPTY, "subvolume '%s' has snapshots", sv.Name)
	case len(s.snapshots) > 0:
		// Retained: the data goes, the snapshots and the name stay.
		s.info = SubvolumeInfo{Type: s.info.Type, State: StateSnapRetained}
		return nil
	}
	// Without snapshots, retain or not, the subvolume goes.
	delete(g, sv.Name)
	return nil
}

func (f *FakeVolumes) CreateSnapshot(_ context.Context, snap Snapshot) error {
	const op = "fs subvolume snapshot create"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("CreateSnapshot"); err != nil {
		return err
	}
	s, err := f.ready(snap.Subvolume, "snap-create")
	if err != nil {
		return named(err, op, snap.String())
	}
	// An existing snapshot: success, unchanged (same creation time).
	if _, ok := s.snapshots[snap.Name]; !ok {
		s.snapshots[snap.Name] = &fakeSnapshot{created: time.Now(), quota: s.info.BytesQuota, used: s.info.BytesUsed,
			mode: s.info.Mode, pool: s.info.DataPool, path: s.info.Path, pending: map[Subvolume]bool{}}
	}
	return nil
}

func (f *FakeVolumes) snapshot(snap Snapshot, op string) (*fakeSubvolume, *fakeSnapshot, error) {
	s, err := f.ready(snap.Subvolume, op)
	if err != nil {
		return nil, nil, err
	}
	sn, ok := s.snapshots[snap.Name]
	if !ok {
		return nil, nil, fakeErr("", snap.String(), syscall.ENOENT, "snapshot '%s' does not exist", snap.Name)
	}
	return s, sn, nil
}

func (f *FakeVolumes) RemoveSnapshot(_ context.Context, snap Snapshot) error {
	const op = "fs subvolume snapshot rm"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("RemoveSnapshot"); err != nil {
		return err
	}
	s, sn, err := f.snapshot(snap, "snap-rm")
	if err != nil {
		return named(err, op, snap.String())
	}
	// A snapshot with clones pending or in progress stays (force or not).
	if len(sn.pending) > 0 {
		return fakeErr(op, snap.String(), syscall.EAGAIN, "snapshot '%s' has pending clones", snap.Name)
	}
	delete(s.snapshots, snap.Name)
	// The last snapshot of a retained subvolume takes the subvolume along.
	if s.info.State == StateSnapRetained && len(s.snapshots) == 0 {
		g, _ := f.group(snap.Subvolume.FS, snap.Subvolume.Group)
		delete(g, snap.Subvolume.Name)
	}
	return nil
}

func (f *FakeVolumes) ListSnapshots(_ context.Context, sv Subvolume) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ListSnapshots"); err != nil {
		return nil, err
	}
	s, err := f.ready(sv, "snap-ls")
	if err != nil {
		return nil, named(err, "fs subvolume snapshot ls", sv.String())
	}
	return slices.Sorted(maps.Keys(s.snapshots)), nil
}

func (f *FakeVolumes) Snapshot(_ context.Context, snap Snapshot) (SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("Snapshot"); err != nil {
		return SnapshotInfo{}, err
	}
	_, sn, err := f.snapshot(snap, "snap-info")
	if err != nil {
		return SnapshotInfo{}, named(err, "fs subvolume snapshot info", snap.String())
	}
	return SnapshotInfo{Created: sn.created, DataPool: sn.pool, HasPendingClones: len(sn.pending) > 0}, nil
}

func (f *FakeVolumes) Clone(_ context.Context, snap Snapshot, target Subvolume, pool string) error {
	const op = "fs subvolume snapshot clone"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("Clone"); err != nil {
		return err
	}
	if target.FS != snap.Subvolume.FS {
		return invalid(op, target.String(), "a clone stays in its source's filesystem "+snap.Subvolume.FS)
	}
	// A snapshot of a snapshot-retained subvolume can be cloned.
	_, sn, err := f.snapshot(snap, "clone-source")
	if err != nil {
		return named(err, op, snap.String())
	}
	g, err := f.group(target.FS, target.Group)
	if err != nil {
		return named(err, op, target.String())
	}
	if _, ok := g[target.Name]; ok {
		return fakeErr(op, target.String(), syscall.EEXIST, "subvolume '%s' exists", target.Name)
	}
	if pool == "" {
		pool = sn.pool
	}
	if _, ok := f.checkPool(target.FS, pool); !ok {
		return fakeErr(op, target.String(), syscall.EINVAL, "invalid pool layout '%s' -- need a valid data pool", pool)
	}
	// The clone gets the snapshot's quota, mode and data, even data over
	// that quota.
	g[target.Name] = &fakeSubvolume{
		info: SubvolumeInfo{Type: "clone", State: StateComplete, Path: f.newPath(target), BytesQuota: sn.quota,
			BytesUsed: sn.used, DataPool: pool, Mode: sn.mode, Created: time.Now().Truncate(time.Second), Features: fakeFeatures()},
		snapshots: map[string]*fakeSnapshot{},
		clone:     &fakeClone{source: snap, state: ClonePending},
	}
	sn.pending[target] = true
	return nil
}

func (f *FakeVolumes) CloneStatus(_ context.Context, target Subvolume) (CloneStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("CloneStatus"); err != nil {
		return CloneStatus{}, err
	}
	c, err := f.clone(target, "clone-status")
	if err != nil {
		return CloneStatus{}, named(err, "fs clone status", target.String())
	}
	if !c.state.Done() {
		f.advance(target, c)
	}
	st := CloneStatus{State: c.state, FailureErrno: c.errno, Failure: c.failure}
	// The mgr names the source until the clone is complete.
	if c.state != CloneComplete {
		src := c.source
		st.Source = &src
	}
	return st, nil
}

func (f *FakeVolumes) clone(target Subvolume, op string) (*fakeClone, error) {
	s, err := f.subvolume(target)
	if err != nil {
		return nil, err
	}
	// Status and cancel of a subvolume not made by Clone: EOPNOTSUPP.
	if s.clone == nil {
		return nil, fakeErr("", target.String(), syscall.EOPNOTSUPP,
			"operation '%s' is not allowed on subvolume '%s' of type subvolume", op, target.Name)
	}
	return s.clone, nil
}

// advance moves a clone one answer on: pending first, then in-progress,
// then complete or the failure FailClone set.
func (f *FakeVolumes) advance(target Subvolume, c *fakeClone) {
	steps := f.CloneSteps
	if steps <= 0 {
		steps = 2
	}
	c.answers++
	switch {
	case c.failAt != nil:
		f.finish(target, c, CloneFailed, c.failAt.errno, c.failAt.msg)
	case c.answers > steps:
		f.finish(target, c, CloneComplete, 0, "")
	case c.answers > 1:
		c.state = CloneInProgress
	}
}

// finish ends a clone; its source snapshot no longer has it pending.
func (f *FakeVolumes) finish(target Subvolume, c *fakeClone, state CloneState, errno syscall.Errno, msg string) {
	c.state, c.errno, c.failure = state, errno, msg
	if s, err := f.subvolume(c.source.Subvolume); err == nil {
		if sn, ok := s.snapshots[c.source.Name]; ok {
			delete(sn.pending, target)
		}
	}
}

func (f *FakeVolumes) CancelClone(_ context.Context, target Subvolume) error {
	const op = "fs clone cancel"
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("CancelClone"); err != nil {
		return err
	}
	c, err := f.clone(target, "clone-cancel")
	if err != nil {
		return named(err, op, target.String())
	}
	if c.state.Done() {
		return fakeErr(op, target.String(), syscall.EINVAL, "cannot cancel -- clone finished (check clone status)")
	}
	// A canceled clone reports EINTR as its failure.
	f.finish(target, c, CloneCanceled, syscall.EINTR, "user interrupted clone operation")
	return nil
}

var _ Volumes = (*FakeVolumes)(nil)
