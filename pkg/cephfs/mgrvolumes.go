package cephfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/ceph/go-ceph/cephfs/admin"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// MgrVolumes is Volumes over the mgr volumes module, through go-ceph's
// cephfs/admin. Each call is one mgr (or mon) command; librados bounds it
// by rados_mon_op_timeout, and ctx bounds how long the caller waits.
type MgrVolumes struct {
	conn admin.RadosCommander
	fsa  *admin.FSAdmin

	// groups remembers the groups EnsureGroup made sure of, so that
	// creating a volume costs no group command; a subvolume command that
	// finds the group gone makes it forget.
	groups sync.Map // "fs/group" -> struct{}
}

// NewMgrVolumes returns the Volumes of the cluster conn is connected to;
// conn is a *rados.Conn (ceph.Conn's embedded one) from
// ceph.ConnPool.GetForMgr: were librados to time a mgr command out, the
// late reply would corrupt memory.
func NewMgrVolumes(conn admin.RadosCommander) *MgrVolumes {
	return &MgrVolumes{conn: conn, fsa: admin.NewFromConn(conn)}
}

var _ Volumes = (*MgrVolumes)(nil)

// call runs one go-ceph admin call, bounded by ctx, and types its error.
func call[T any](ctx context.Context, op, target string, fn func() (T, error)) (T, error) {
	v, err := util.Do(ctx, op+" "+target, fn)
	if err != nil {
		var zero T
		return zero, mgrError(op, target, "", err)
	}
	return v, nil
}

func run(ctx context.Context, op, target string, fn func() error) error {
	_, err := call(ctx, op, target, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// mgrError turns a failed command into an *Error carrying the errno and
// the mgr's message; a context error or one without errno stays as it is.
func mgrError(op, target, status string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err // util.Do named the call
	}
	errno := ceph.Errno(err)
	if errno == 0 {
		return fmt.Errorf("%s %s: %w", op, target, err)
	}
	var carrier interface{ Status() string }
	if status == "" && errors.As(err, &carrier) {
		status = carrier.Status()
	}
	return &Error{Op: op, Target: target, Errno: errno, Status: status,
		// The mgr's answer to a command it does not know.
		Missing: errno == syscall.EINVAL && strings.HasPrefix(status, "No handler found")}
}

func invalid(op, target, why string) error {
	return &Error{Op: op, Target: target, Errno: syscall.EINVAL, Status: why}
}

// command sends a JSON mgr command go-ceph does not send right, bounded
// by ctx, and decodes its JSON answer into out when out is not nil.
func (m *MgrVolumes) command(ctx context.Context, op, target string, cmd map[string]string, out any) error {
	cmd["prefix"] = op
	cmd["format"] = "json"
	buf, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	type reply struct {
		body   []byte
		status string
	}
	r, err := util.Do(ctx, op+" "+target, func() (reply, error) {
		body, status, err := m.conn.MgrCommand([][]byte{buf})
		return reply{body, status}, err
	})
	if err != nil {
		return mgrError(op, target, r.status, err)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			return fmt.Errorf("%s %s: decoding %q: %w", op, target, r.body, err)
		}
	}
	return nil
}

// setIf sets an optional argument only when it has a value, as go-ceph
// does: a group left out is the default group.
func setIf(cmd map[string]string, key, value string) {
	if value != "" {
		cmd[key] = value
	}
}

func (m *MgrVolumes) FileSystem(ctx context.Context, name string) (FSInfo, error) {
	list, ids, err := m.fsMaps(ctx, name)
	if err != nil {
		return FSInfo{}, err
	}
	return fsInfo(name, list, ids)
}

func (m *MgrVolumes) FileSystems(ctx context.Context) ([]FSInfo, error) {
	list, ids, err := m.fsMaps(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []FSInfo
	for _, fs := range list {
		if info, err := fsInfo(fs.Name, list, ids); err == nil {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b FSInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// fsMaps reads `fs ls` (pools) and `fs dump` (FSCIDs).
func (m *MgrVolumes) fsMaps(ctx context.Context, target string) ([]admin.FSPoolInfo, []admin.VolumeIdent, error) {
	list, err := call(ctx, "fs ls", target, m.fsa.ListFileSystems)
	if err != nil {
		return nil, nil, err
	}
	ids, err := call(ctx, "fs dump", target, m.fsa.EnumerateVolumes)
	return list, ids, err
}

// fsInfo joins `fs ls` (pools) and `fs dump` (FSCIDs) for one filesystem.
func fsInfo(name string, list []admin.FSPoolInfo, ids []admin.VolumeIdent) (FSInfo, error) {
	info := FSInfo{Name: name, ID: -1}
	for _, id := range ids {
		if id.Name == name {
			info.ID = id.ID
		}
	}
	for _, fs := range list {
		if fs.Name != name {
			continue
		}
		info.MetadataPool, info.MetadataPoolID = fs.MetadataPool, int64(fs.MetadataPoolID)
		info.DataPools = fs.DataPools
		for _, id := range fs.DataPoolIDs {
			info.DataPoolIDs = append(info.DataPoolIDs, int64(id))
		}
	}
	if info.ID < 0 || info.MetadataPool == "" {
		return FSInfo{}, &Error{Op: "fs ls", Target: name, Errno: syscall.ENOENT,
			Status: fmt.Sprintf("filesystem '%s' does not exist", name)}
	}
	return info, nil
}

func (m *MgrVolumes) EnsureGroup(ctx context.Context, fs, group string) error {
	key := fs + "/" + group
	if _, ok := m.groups.Load(key); ok {
		return nil
	}
	// The mgr answers success for a group that exists, and serializes
	// commands on one filesystem, so concurrent creates all succeed.
	err := run(ctx, "fs subvolumegroup create", key, func() error { return m.fsa.CreateSubVolumeGroup(fs, group, nil) })
	if err == nil {
		m.groups.Store(key, struct{}{})
	}
	return err
}

// forgetGroupIfGone drops a remembered group when err says the mgr did
// not find what a command named, so the next EnsureGroup asks again.
func (m *MgrVolumes) forgetGroupIfGone(sv Subvolume, err error) error {
	if errors.Is(err, ErrNotFound) {
		m.groups.Delete(sv.FS + "/" + sv.Group)
	}
	return err
}

func (m *MgrVolumes) CreateSubvolume(ctx context.Context, sv Subvolume, spec SubvolumeSpec) error {
	const op = "fs subvolume create"
	if spec.Size < 0 {
		return invalid(op, sv.String(), "negative size")
	}
	opts := &admin.SubVolumeOptions{Size: admin.ByteCount(spec.Size), Mode: int(spec.Mode.Perm()), PoolLayout: spec.Pool}
	err := run(ctx, op, sv.String(), func() error { return m.fsa.CreateSubVolume(sv.FS, sv.Group, sv.Name, opts) })
	return m.forgetGroupIfGone(sv, err)
}

func (m *MgrVolumes) Subvolume(ctx context.Context, sv Subvolume) (SubvolumeInfo, error) {
	info, err := call(ctx, "fs subvolume info", sv.String(), func() (*admin.SubVolumeInfo, error) {
		return m.fsa.SubVolumeInfo(sv.FS, sv.Group, sv.Name)
	})
	if err != nil {
		return SubvolumeInfo{}, err
	}
	return subvolumeInfo(info), nil
}

func subvolumeInfo(in *admin.SubVolumeInfo) SubvolumeInfo {
	out := SubvolumeInfo{
		Type: in.Type, State: SubvolumeState(in.State), Path: in.Path,
		BytesUsed: int64(in.BytesUsed), DataPool: in.DataPool, PoolNamespace: in.PoolNamespace,
		Mode: fs.FileMode(in.Mode & 0o777), UID: in.Uid, GID: in.Gid, Created: in.CreatedAt.Time,
	}
	if q, ok := in.BytesQuota.(admin.ByteCount); ok { // otherwise "infinite", or absent
		out.BytesQuota = int64(q)
	}
	for _, f := range in.Features {
		out.Features = append(out.Features, string(f))
	}
	return out
}

func (m *MgrVolumes) SubvolumePath(ctx context.Context, sv Subvolume) (string, error) {
	return call(ctx, "fs subvolume getpath", sv.String(), func() (string, error) {
		return m.fsa.SubVolumePath(sv.FS, sv.Group, sv.Name)
	})
}

func (m *MgrVolumes) ListSubvolumes(ctx context.Context, fs, group string) ([]string, error) {
	return call(ctx, "fs subvolume ls", fs+"/"+group, func() ([]string, error) {
		return m.fsa.ListSubVolumes(fs, group)
	})
}

func (m *MgrVolumes) ResizeSubvolume(ctx context.Context, sv Subvolume, size int64) error {
	const op = "fs subvolume resize"
	if size <= 0 {
		return invalid(op, sv.String(), "size must be positive")
	}
	return run(ctx, op, sv.String(), func() error {
		_, err := m.fsa.ResizeSubVolume(sv.FS, sv.Group, sv.Name, admin.ByteCount(size), true)
		return err
	})
}

func (m *MgrVolumes) RemoveSubvolume(ctx context.Context, sv Subvolume, opts RemoveOptions) error {
	flags := admin.SubVolRmFlags{Force: opts.Force, RetainSnapshots: opts.RetainSnapshots}
	return run(ctx, "fs subvolume rm", sv.String(), func() error {
		return m.fsa.RemoveSubVolumeWithFlags(sv.FS, sv.Group, sv.Name, flags)
	})
}

func (m *MgrVolumes) CreateSnapshot(ctx context.Context, snap Snapshot) error {
	sv := snap.Subvolume
	return run(ctx, "fs subvolume snapshot create", snap.String(), func() error {
		return m.fsa.CreateSubVolumeSnapshot(sv.FS, sv.Group, sv.Name, snap.Name)
	})
}

func (m *MgrVolumes) RemoveSnapshot(ctx context.Context, snap Snapshot) error {
	sv := snap.Subvolume
	return run(ctx, "fs subvolume snapshot rm", snap.String(), func() error {
		return m.fsa.RemoveSubVolumeSnapshot(sv.FS, sv.Group, sv.Name, snap.Name)
	})
}

func (m *MgrVolumes) ListSnapshots(ctx context.Context, sv Subvolume) ([]string, error) {
	return call(ctx, "fs subvolume snapshot ls", sv.String(), func() ([]string, error) {
		return m.fsa.ListSubVolumeSnapshots(sv.FS, sv.Group, sv.Name)
	})
}

func (m *MgrVolumes) Snapshot(ctx context.Context, snap Snapshot) (SnapshotInfo, error) {
	sv := snap.Subvolume
	info, err := call(ctx, "fs subvolume snapshot info", snap.String(), func() (*admin.SubVolumeSnapshotInfo, error) {
		return m.fsa.SubVolumeSnapshotInfo(sv.FS, sv.Group, sv.Name, snap.Name)
	})
	if err != nil {
		return SnapshotInfo{}, err
	}
	return SnapshotInfo{Created: info.CreatedAt.Time, DataPool: info.DataPool, HasPendingClones: info.HasPendingClones == "yes"}, nil
}

// Clone sends its own command: go-ceph v0.41.0 passes the source group
// as the target group.
func (m *MgrVolumes) Clone(ctx context.Context, snap Snapshot, target Subvolume, pool string) error {
	const op = "fs subvolume snapshot clone"
	src := snap.Subvolume
	if target.FS != src.FS {
		return invalid(op, target.String(), "a clone stays in its source's filesystem "+src.FS)
	}
	cmd := map[string]string{"vol_name": src.FS, "sub_name": src.Name, "snap_name": snap.Name, "target_sub_name": target.Name}
	setIf(cmd, "group_name", src.Group)
	setIf(cmd, "target_group_name", target.Group)
	setIf(cmd, "pool_layout", pool)
	return m.forgetGroupIfGone(target, m.command(ctx, op, snap.String()+" to "+target.String(), cmd, nil))
}

// cloneStatusReply is `fs clone status`. Pacific puts "failure" inside
// "status" and names the message "error_msg", where go-ceph v0.41.0 reads
// "failure" beside "status" and "errstr": it would lose both.
type cloneStatusReply struct {
	Status struct {
		State  string `json:"state"`
		Source *struct {
			Volume    string `json:"volume"`
			Group     string `json:"group"`
			Subvolume string `json:"subvolume"`
			Snapshot  string `json:"snapshot"`
		} `json:"source"`
		Failure *cloneFailure `json:"failure"`
	} `json:"status"`
	Failure *cloneFailure `json:"failure"`
}

type cloneFailure struct {
	Errno    string `json:"errno"`
	ErrorMsg string `json:"error_msg"`
	ErrStr   string `json:"errstr"`
}

func (r cloneStatusReply) status() CloneStatus {
	out := CloneStatus{State: CloneState(r.Status.State)}
	if s := r.Status.Source; s != nil {
		out.Source = &Snapshot{Subvolume: Subvolume{FS: s.Volume, Group: s.Group, Name: s.Subvolume}, Name: s.Snapshot}
	}
	f := r.Status.Failure
	if f == nil {
		f = r.Failure
	}
	if f != nil {
		n, _ := strconv.Atoi(f.Errno)
		out.FailureErrno = syscall.Errno(n)
		out.Failure = f.ErrorMsg + f.ErrStr
	}
	return out
}

func (m *MgrVolumes) CloneStatus(ctx context.Context, target Subvolume) (CloneStatus, error) {
	var reply cloneStatusReply
	cmd := map[string]string{"vol_name": target.FS, "clone_name": target.Name}
	setIf(cmd, "group_name", target.Group)
	if err := m.command(ctx, "fs clone status", target.String(), cmd, &reply); err != nil {
		return CloneStatus{}, err
	}
	return reply.status(), nil
}

func (m *MgrVolumes) CancelClone(ctx context.Context, target Subvolume) error {
	return run(ctx, "fs clone cancel", target.String(), func() error {
		return m.fsa.CancelClone(target.FS, target.Group, target.Name)
	})
}
