package cephfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// cephErr carries a negative errno the way go-ceph's errors do.
type cephErr int

func (e cephErr) Error() string  { return fmt.Sprintf("rados: ret=%d", int(e)) }
func (e cephErr) ErrorCode() int { return int(e) }

// reply is one canned answer of scriptedCommander.
type reply struct {
	body   string
	status string
	errno  syscall.Errno
}

// scriptedCommander answers mgr and mon commands from a script keyed by
// prefix, records them, and blocks every command while block is open.
type scriptedCommander struct {
	mu      sync.Mutex
	answers map[string]reply
	sent    []map[string]any
	block   chan struct{}
}

func (s *scriptedCommander) answer(buf []byte) ([]byte, string, error) {
	if s.block != nil {
		<-s.block
	}
	var cmd map[string]any
	if err := json.Unmarshal(buf, &cmd); err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, cmd)
	r := s.answers[cmd["prefix"].(string)]
	var err error
	if r.errno != 0 {
		err = cephErr(-int(r.errno))
	}
	return []byte(r.body), r.status, err
}

func (s *scriptedCommander) MgrCommand(bufs [][]byte) ([]byte, string, error) {
	return s.answer(bufs[0])
}
func (s *scriptedCommander) MonCommand(buf []byte) ([]byte, string, error) { return s.answer(buf) }

func (s *scriptedCommander) commands() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.sent...)
}

var (
	testSV   = Subvolume{FS: "cephfs", Group: "csi", Name: "csi-vol-1"}
	testSnap = Snapshot{Subvolume: testSV, Name: "csi-snap-1"}
)

// everyCall calls each Volumes method once.
var everyCall = map[string]func(context.Context, Volumes) error{
	"FileSystem":      func(ctx context.Context, v Volumes) error { _, err := v.FileSystem(ctx, "cephfs"); return err },
	"FileSystems":     func(ctx context.Context, v Volumes) error { _, err := v.FileSystems(ctx); return err },
	"EnsureGroup":     func(ctx context.Context, v Volumes) error { return v.EnsureGroup(ctx, "cephfs", "csi") },
	"CreateSubvolume": func(ctx context.Context, v Volumes) error { return v.CreateSubvolume(ctx, testSV, SubvolumeSpec{}) },
	"Subvolume":       func(ctx context.Context, v Volumes) error { _, err := v.Subvolume(ctx, testSV); return err },
	"SubvolumePath":   func(ctx context.Context, v Volumes) error { _, err := v.SubvolumePath(ctx, testSV); return err },
	"ListSubvolumes": func(ctx context.Context, v Volumes) error {
		_, err := v.ListSubvolumes(ctx, "cephfs", "csi")
		return err
	},
	"ResizeSubvolume": func(ctx context.Context, v Volumes) error { return v.ResizeSubvolume(ctx, testSV, mib) },
	"RemoveSubvolume": func(ctx context.Context, v Volumes) error { return v.RemoveSubvolume(ctx, testSV, RemoveOptions{}) },
	"CreateSnapshot":  func(ctx context.Context, v Volumes) error { return v.CreateSnapshot(ctx, testSnap) },
	"RemoveSnapshot":  func(ctx context.Context, v Volumes) error { return v.RemoveSnapshot(ctx, testSnap) },
	"ListSnapshots":   func(ctx context.Context, v Volumes) error { _, err := v.ListSnapshots(ctx, testSV); return err },
	"Snapshot":        func(ctx context.Context, v Volumes) error { _, err := v.Snapshot(ctx, testSnap); return err },
	"SnapshotPath":    func(ctx context.Context, v Volumes) error { _, err := SnapshotPath(ctx, v, testSnap); return err },
	"Clone":           func(ctx context.Context, v Volumes) error { return v.Clone(ctx, testSnap, testSV, "") },
	"CloneStatus":     func(ctx context.Context, v Volumes) error { _, err := v.CloneStatus(ctx, testSV); return err },
	"CancelClone":     func(ctx context.Context, v Volumes) error { return v.CancelClone(ctx, testSV) },
}

// Every call returns at the caller's deadline even when the mgr never answers.
func TestMgrVolumesDeadline(t *testing.T) {
	cmd := &scriptedCommander{block: make(chan struct{})}
	defer close(cmd.block)
	v := NewMgrVolumes(cmd)
	for name, call := range everyCall {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := call(ctx, v)
			if d := time.Since(start); d > time.Second {
				t.Errorf("returned after %v", d)
			}
			if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "fs ") {
				t.Errorf("got %v, want a deadline error naming the command", err)
			}
		})
	}
}

func TestMgrVolumesErrors(t *testing.T) {
	tests := []struct {
		name   string
		answer reply
		kind   error
		code   codes.Code
		text   string
	}{
		{"ENOENT", reply{status: "subvolume 'csi-vol-1' does not exist", errno: syscall.ENOENT}, ErrNotFound, codes.NotFound,
			"subvolume 'csi-vol-1' does not exist (ENOENT)"},
		{"EEXIST", reply{status: "subvolume 'csi-vol-1' exists", errno: syscall.EEXIST}, ErrExists, codes.AlreadyExists, "(EEXIST)"},
		{"EAGAIN", reply{status: "subvolume 'csi-vol-1' is not ready for operation info", errno: syscall.EAGAIN}, ErrInProgress,
			codes.Internal, "not ready for operation info (EAGAIN)"},
		{"ENOTEMPTY", reply{status: "subvolume 'csi-vol-1' has snapshots", errno: syscall.ENOTEMPTY}, ErrHasSnapshots,
			codes.FailedPrecondition, "has snapshots (ENOTEMPTY)"},
		{"EINVAL", reply{status: "Invalid subvolume size", errno: syscall.EINVAL}, ErrInvalid, codes.InvalidArgument, "(EINVAL)"},
		{"EOPNOTSUPP", reply{status: "operation 'clone-status' is not allowed", errno: syscall.EOPNOTSUPP}, ErrNotSupported,
			codes.Internal, "(ENOTSUP)"}, // Linux names 95 ENOTSUP first
		{"missing command", reply{status: `No handler found for 'fs subvolume info'`, errno: syscall.EINVAL}, ErrNotSupported,
			codes.InvalidArgument, "this Ceph release does not have this command (EINVAL)"},
		{"ETIMEDOUT", reply{errno: syscall.ETIMEDOUT}, ErrTimedOut, codes.DeadlineExceeded, "(ETIMEDOUT)"},
		{"EACCES", reply{status: "access denied", errno: syscall.EACCES}, nil, codes.PermissionDenied, "access denied (EACCES)"},
	}
	sentinels := []error{ErrNotFound, ErrExists, ErrInProgress, ErrHasSnapshots, ErrInvalid, ErrNotSupported, ErrTimedOut}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			answers := map[string]reply{}
			for _, p := range []string{"fs ls", "fs dump", "fs subvolumegroup create", "fs subvolume create", "fs subvolume info",
				"fs subvolume getpath", "fs subvolume ls", "fs subvolume resize", "fs subvolume rm",
				"fs subvolume snapshot create", "fs subvolume snapshot rm", "fs subvolume snapshot ls",
				"fs subvolume snapshot info", "fs subvolume snapshot clone", "fs clone status", "fs clone cancel"} {
				answers[p] = tc.answer
			}
			v := NewMgrVolumes(&scriptedCommander{answers: answers})
			for name, call := range everyCall {
				err := call(context.Background(), v)
				var e *Error
				if !errors.As(err, &e) || ceph.Errno(err) != tc.answer.errno || ceph.Code(err) != tc.code ||
					!strings.Contains(err.Error(), tc.text) || !strings.HasPrefix(err.Error(), "fs ") {
					t.Errorf("%s: got %v (errno %d, code %v)", name, err, ceph.Errno(err), ceph.Code(err))
				}
				for _, s := range sentinels {
					if errors.Is(err, s) != (s == tc.kind) {
						t.Errorf("%s: errors.Is(%v, %v) = %v", name, err, s, !(s == tc.kind))
					}
				}
			}
		})
	}
}

// go-ceph v0.41.0 sends the source group as the target group; Clone must not.
func TestMgrVolumesCloneCommand(t *testing.T) {
	tests := []struct {
		name   string
		source Subvolume
		target Subvolume
		pool   string
		want   map[string]any
	}{
		{"across groups with a pool", testSV, Subvolume{FS: "cephfs", Group: "other", Name: "csi-vol-2"}, "ec-data",
			map[string]any{"prefix": "fs subvolume snapshot clone", "format": "json", "vol_name": "cephfs", "group_name": "csi",
				"sub_name": "csi-vol-1", "snap_name": "csi-snap-1", "target_sub_name": "csi-vol-2",
				"target_group_name": "other", "pool_layout": "ec-data"}},
		{"default groups", Subvolume{FS: "cephfs", Name: "a"}, Subvolume{FS: "cephfs", Name: "b"}, "",
			map[string]any{"prefix": "fs subvolume snapshot clone", "format": "json", "vol_name": "cephfs",
				"sub_name": "a", "snap_name": "csi-snap-1", "target_sub_name": "b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := &scriptedCommander{}
			err := NewMgrVolumes(cmd).Clone(context.Background(), Snapshot{Subvolume: tc.source, Name: "csi-snap-1"}, tc.target, tc.pool)
			if err != nil {
				t.Fatal(err)
			}
			if sent := cmd.commands(); len(sent) != 1 || fmt.Sprint(sent[0]) != fmt.Sprint(tc.want) {
				t.Errorf("sent %v, want %v", sent, tc.want)
			}
		})
	}
	err := NewMgrVolumes(&scriptedCommander{}).Clone(context.Background(), testSnap, Subvolume{FS: "other", Group: "csi", Name: "x"}, "")
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("clone into another filesystem: %v", err)
	}
}

// Answers of `fs clone status` as Pacific 16.2.15 gives them.
func TestCloneStatusReply(t *testing.T) {
	src := &Snapshot{Subvolume: Subvolume{FS: "cephfs", Group: "csi", Name: "probe"}, Name: "ps3"}
	tests := []struct {
		name, body string
		want       CloneStatus
	}{
		{"pending", `{"status": {"state": "pending", "source": {"volume": "cephfs", "subvolume": "probe", "snapshot": "ps3", "group": "csi"}}}`,
			CloneStatus{State: ClonePending, Source: src}},
		{"complete", `{"status": {"state": "complete"}}`, CloneStatus{State: CloneComplete}},
		{"canceled", `{"status": {"state": "canceled", "source": {"volume": "cephfs", "subvolume": "probe", "snapshot": "ps3", "group": "csi"},
			"failure": {"errno": "4", "error_msg": "user interrupted clone operation"}}}`,
			CloneStatus{State: CloneCanceled, Source: src, FailureErrno: syscall.EINTR, Failure: "user interrupted clone operation"}},
		{"failure beside status", `{"status": {"state": "failed"}, "failure": {"errno": "2", "errstr": "snapshot 'ps3' does not exist"}}`,
			CloneStatus{State: CloneFailed, FailureErrno: syscall.ENOENT, Failure: "snapshot 'ps3' does not exist"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := NewMgrVolumes(&scriptedCommander{answers: map[string]reply{"fs clone status": {body: tc.body}}})
			got, err := v.CloneStatus(context.Background(), testSV)
			if err != nil || fmt.Sprintf("%+v %+v", got, got.Source) != fmt.Sprintf("%+v %+v", tc.want, tc.want.Source) {
				t.Errorf("got %+v (source %+v), %v; want %+v", got, got.Source, err, tc.want)
			}
		})
	}
}

func TestMgrVolumesFileSystem(t *testing.T) {
	cmd := &scriptedCommander{answers: map[string]reply{
		"fs ls": {body: `[{"name":"cephfs","metadata_pool":"cephfs_metadata","metadata_pool_id":2,"data_pool_ids":[3,5],` +
			`"data_pools":["cephfs_data","cephfs_ec"]},{"name":"other","metadata_pool":"m","metadata_pool_id":7,"data_pool_ids":[8],"data_pools":["d"]}]`},
		"fs dump": {body: `{"filesystems":[{"id":4,"mdsmap":{"fs_name":"other"}},{"id":1,"mdsmap":{"fs_name":"cephfs"}}]}`,
			status: "dumped fsmap epoch 12"},
	}}
	v := NewMgrVolumes(cmd)
	got, err := v.FileSystem(context.Background(), "cephfs")
	want := FSInfo{Name: "cephfs", ID: 1, MetadataPool: "cephfs_metadata", MetadataPoolID: 2,
		DataPools: []string{"cephfs_data", "cephfs_ec"}, DataPoolIDs: []int64{3, 5}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %+v, %v; want %+v", got, err, want)
	}
	if _, err := v.FileSystem(context.Background(), "missing"); !errors.Is(err, ErrNotFound) || ceph.Errno(err) != syscall.ENOENT {
		t.Errorf("missing filesystem: %v", err)
	}
	all, err := v.FileSystems(context.Background())
	if err != nil || len(all) != 2 || fmt.Sprint(all[0]) != fmt.Sprint(want) || all[1].Name != "other" || all[1].ID != 4 {
		t.Errorf("FileSystems = %+v, %v", all, err)
	}
}

// EnsureGroup asks the mgr once per group, and again after a subvolume
// command found the group gone.
func TestMgrVolumesEnsureGroupRemembers(t *testing.T) {
	cmd := &scriptedCommander{answers: map[string]reply{}}
	v := NewMgrVolumes(cmd)
	ctx := context.Background()
	count := func() (n int) {
		for _, c := range cmd.commands() {
			if c["prefix"] == "fs subvolumegroup create" {
				n++
			}
		}
		return n
	}
	for range 3 {
		if err := v.EnsureGroup(ctx, "cephfs", "csi"); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(); n != 1 {
		t.Fatalf("%d group commands for three EnsureGroup", n)
	}
	cmd.answers["fs subvolume create"] = reply{status: "subvolume group 'csi' does not exist", errno: syscall.ENOENT}
	if err := v.CreateSubvolume(ctx, testSV, SubvolumeSpec{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateSubvolume: %v", err)
	}
	if err := v.EnsureGroup(ctx, "cephfs", "csi"); err != nil || count() != 2 {
		t.Errorf("after the group vanished: %v, %d group commands", err, count())
	}
}

func TestSnapshotPath(t *testing.T) {
	created := time.Date(2026, 11, 30, 7, 25, 15, 0, time.UTC)
	live := SubvolumeInfo{State: StateComplete, Path: "/volumes/csi/csi-vol-1/775ee765-967f-466b-8a21-dc67c7dc1cfa", Created: created}
	tests := []struct {
		name     string
		sub      SubvolumeInfo
		snapTime time.Time
		want     string // "" for ErrNotFound
	}{
		{"taken later", live, created.Add(time.Hour), "/volumes/csi/csi-vol-1/.snap/csi-snap-1/775ee765-967f-466b-8a21-dc67c7dc1cfa"},
		{"taken in the creation second", live, created.Add(300 * time.Millisecond),
			"/volumes/csi/csi-vol-1/.snap/csi-snap-1/775ee765-967f-466b-8a21-dc67c7dc1cfa"},
		{"of an earlier subvolume", live, created.Add(-time.Millisecond), ""},
		{"retained", SubvolumeInfo{State: StateSnapRetained}, created, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := snapshotPath(testSnap, tc.sub, SnapshotInfo{Created: tc.snapTime})
			if tc.want == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("got %q, %v; want ErrNotFound", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
