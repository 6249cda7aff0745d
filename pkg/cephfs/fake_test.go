package cephfs

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

var testFS = FSInfo{Name: "cephfs", ID: 1, MetadataPool: "cephfs_metadata", MetadataPoolID: 2,
	DataPools: []string{"cephfs_data"}, DataPoolIDs: []int64{3}}

// TestFakeVolumesContract runs the contract with clones that finish at
// once (a fast mgr) and with clones that outlast every check.
func TestFakeVolumesContract(t *testing.T) {
	for _, steps := range []int{1, 40} {
		t.Run(fmt.Sprintf("CloneSteps=%d", steps), func(t *testing.T) { fakeVolumesContract(t, steps) })
	}
}

func fakeVolumesContract(t *testing.T, steps int) {
	f := NewFakeVolumes(testFS)
	f.CloneSteps = steps
	testVolumesContract(t, f, volumesEnv{
		fs: "cephfs", group: "csi", pool: "cephfs_data", cloneWait: time.Second,
		write: func(t *testing.T, sv Subvolume, n int64) {
			info, err := f.Subvolume(context.Background(), sv)
			if err == nil {
				err = f.SetUsed(sv, info.BytesUsed+n)
			}
			if err != nil {
				t.Fatal(err)
			}
		},
		breakClone: func(t *testing.T, snap Snapshot, target Subvolume) {
			// What the mgr reports when the snapshot vanished under the cloner.
			if err := f.FailClone(target, syscall.ENOENT, "snapshot '"+snap.Name+"' does not exist"); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			delete(f.fss[snap.Subvolume.FS].groups[snap.Subvolume.Group][snap.Subvolume.Name].snapshots, snap.Name)
			f.mu.Unlock()
		},
	})
}

func TestFakeVolumesCloneSteps(t *testing.T) {
	ctx := context.Background()
	f := NewFakeVolumes(testFS)
	f.CloneSteps = 3
	sv := Subvolume{FS: "cephfs", Group: "csi", Name: "src"}
	snap := Snapshot{Subvolume: sv, Name: "s"}
	target := Subvolume{FS: "cephfs", Group: "csi", Name: "dst"}
	for _, err := range []error{f.EnsureGroup(ctx, "cephfs", "csi"), f.CreateSubvolume(ctx, sv, SubvolumeSpec{}),
		f.CreateSnapshot(ctx, snap), f.Clone(ctx, snap, target, "")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var got []CloneState
	for range 5 {
		st, err := f.CloneStatus(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, st.State)
	}
	want := []CloneState{ClonePending, CloneInProgress, CloneInProgress, CloneComplete, CloneComplete}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("states %v, want %v", got, want)
		}
	}
	if n := f.Calls("Clone"); n != 1 {
		t.Errorf("Calls(Clone) = %d", n)
	}
}

func TestFakeVolumesFailNext(t *testing.T) {
	ctx := context.Background()
	f := NewFakeVolumes(testFS)
	boom := errors.New("boom")
	f.FailNext("EnsureGroup", boom)
	if err := f.EnsureGroup(ctx, "cephfs", "csi"); !errors.Is(err, boom) {
		t.Fatalf("first EnsureGroup = %v, want boom", err)
	}
	if _, err := f.ListSubvolumes(ctx, "cephfs", "csi"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a failed call changed something: %v", err)
	}
	if err := f.EnsureGroup(ctx, "cephfs", "csi"); err != nil {
		t.Fatalf("second EnsureGroup = %v", err)
	}
}
