package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
)

// fsBench measures the CephFS controller (a driver of its own, started
// with --type=cephfs) against its floor: the same mgr commands sent with
// go-ceph (pkg/cephfs's MgrVolumes), as the same user, over a connection
// made as the driver makes its own, into a subvolume group of the floor's.
type fsBench struct {
	drv     csi.ControllerClient
	params  map[string]string
	secrets map[string]string
	vols    *cephfs.MgrVolumes
	fsa     *admin.FSAdmin
	fs      string
	group   string // the floor's
}

// fsPoll is how often the floor reads a clone's state.
const fsPoll = 20 * time.Millisecond

// connectCephFS reaches the CephFS driver and, as its user, the cluster.
func connectCephFS(ctx context.Context, o options, conns *ceph.ConnPool, cluster *ceph.ClusterConfig, tag string) (*fsBench, func(), error) {
	key, err := os.ReadFile(o.fsKeyFile)
	if err != nil {
		return nil, nil, err
	}
	creds := ceph.Credentials{ID: o.fsUser, Key: strings.TrimSpace(string(key))}
	conn, err := grpc.NewClient(o.fsEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := waitProbe(wctx, csi.NewIdentityClient(conn)); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("the CephFS driver not ready within a minute: %w", err)
	}
	mgr, err := conns.GetForMgr(ctx, cluster, creds)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	fb := &fsBench{drv: csi.NewControllerClient(conn), vols: cephfs.NewMgrVolumes(mgr.Conn), fsa: admin.NewFromConn(mgr.Conn),
		fs: o.fsName, group: tag + "-floor", secrets: map[string]string{"adminID": creds.ID, "adminKey": creds.Key},
		params: map[string]string{"clusterID": o.clusterID, "fsName": o.fsName, "subvolumeGroup": tag + "-driver"}}
	return fb, func() { fb.removeGroups(); conn.Close() }, nil
}

// removeGroups removes both sides' groups, empty once the run cleaned up.
func (f *fsBench) removeGroups() {
	for _, g := range []string{f.group, f.params["subvolumeGroup"]} {
		_ = f.fsa.RemoveSubVolumeGroup(f.fs, g)
	}
}

func (f *fsBench) subvolume(name string) cephfs.Subvolume {
	return cephfs.Subvolume{FS: f.fs, Group: f.group, Name: name}
}

var rwxCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
}

func (f *fsBench) createVolume(ctx context.Context, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	r, err := f.drv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{rwxCap}, Parameters: f.params, Secrets: f.secrets, VolumeContentSource: src})
	return r.GetVolume(), err
}

func (f *fsBench) deleteVolume(ctx context.Context, v *csi.Volume) error {
	_, err := f.drv.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: f.secrets})
	return err
}

// fsSides holds what each side made, by item.
type fsSides struct {
	vols []*csi.Volume
	subs []*cephfs.Subvolume
}

func newFSSides(n int) *fsSides {
	return &fsSides{vols: make([]*csi.Volume, n), subs: make([]*cephfs.Subvolume, n)}
}

// measureCephFS measures CreateVolume and DeleteVolume of many volumes at
// each concurrency asked, then the copies (at concurrency 1): a volume
// restored from a snapshot, and a clone of a volume, each until ready.
func (b *bench) measureCephFS(ctx context.Context) {
	if b.fs == nil {
		b.notMeasured = append(b.notMeasured, "CephFS: no -cephfs-endpoint")
		return
	}
	if b.opts.skipped("cephfs") {
		b.notMeasured = append(b.notMeasured, "CephFS: -skip cephfs")
		return
	}
	if err := b.fs.warmUp(ctx, b.name("fs-warm-up")); err != nil {
		b.setupErrs = append(b.setupErrs, err.Error())
		return
	}
	for _, conc := range b.opts.fsConcurrency {
		if ctx.Err() == nil {
			b.fsCreateDelete(ctx, conc)
		}
	}
	if ctx.Err() == nil && b.opts.fsClones > 0 {
		b.fsCopies(ctx)
	}
}

// warmUp makes both sides' groups and first calls, which open connections
// and caches, outside the measurement.
func (f *fsBench) warmUp(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	v, err := f.createVolume(ctx, name, 1<<30, nil)
	if err == nil {
		err = f.deleteVolume(ctx, v)
	}
	if err != nil {
		return fmt.Errorf("CephFS warm-up: %w", err)
	}
	if err := f.vols.EnsureGroup(ctx, f.fs, f.group); err != nil {
		return fmt.Errorf("CephFS floor warm-up: %w", err)
	}
	return nil
}

func (b *bench) fsCreateDelete(ctx context.Context, conc int) {
	s := b.fsCreateVolumes(ctx, "CephFS CreateVolume", fmt.Sprintf("fsvol-c%d", conc), conc, b.opts.fsVolumes)
	b.fsDeleteVolumes(ctx, "CephFS DeleteVolume", conc, s)
}

// fsCreateVolumes makes n empty volumes on each side, measured under op
// unless it is "": a subvolume with a quota, and on the driver's side its
// journal entry too.
func (b *bench) fsCreateVolumes(ctx context.Context, op, prefix string, conc, n int) *fsSides {
	s := newFSSides(n)
	driver := func(ctx context.Context, i int) (err error) {
		s.vols[i], err = b.fs.createVolume(ctx, b.name("%s-%d", prefix, i), b.opts.size, nil)
		return err
	}
	floor := func(ctx context.Context, i int) error {
		sv := b.fs.subvolume(b.name("%s-%d", prefix, i))
		if err := b.fs.vols.CreateSubvolume(ctx, sv, cephfs.SubvolumeSpec{Size: b.opts.size}); err != nil {
			return err
		}
		s.subs[i] = &sv
		return nil
	}
	if op == "" {
		b.setup(ctx, "creating "+prefix+" CephFS volumes", conc, n, both(driver, floor))
	} else {
		b.interleaved(ctx, op, conc, n, driver, floor)
	}
	return s
}

// fsDeleteVolumes deletes what fsCreateVolumes (or a copy) made, measured
// under op unless it is "". The floor keeps snapshots, as the driver does.
func (b *bench) fsDeleteVolumes(ctx context.Context, op string, conc int, s *fsSides) {
	driver := func(ctx context.Context, i int) error {
		if s.vols[i] == nil {
			return errSkip
		}
		return b.fs.deleteVolume(ctx, s.vols[i])
	}
	floor := func(ctx context.Context, i int) error {
		if s.subs[i] == nil {
			return errSkip
		}
		return b.fs.vols.RemoveSubvolume(ctx, *s.subs[i], cephfs.RemoveOptions{RetainSnapshots: true})
	}
	if op == "" {
		b.setup(ctx, "deleting CephFS volumes", conc, len(s.vols), both(driver, floor))
		return
	}
	b.interleaved(ctx, op, conc, len(s.vols), driver, floor)
}

// fsCopies restores volumes from a snapshot and clones volumes, one at a
// time: the mgr clones one after the other anyway. The floor starts the
// same clone and reads its state every 20 ms until it is complete.
func (b *bench) fsCopies(ctx context.Context) {
	n := b.opts.fsClones
	src := b.fsCreateVolumes(ctx, "", "fssrc", 1, n)
	snaps, floorSnaps := make([]*csi.Snapshot, n), make([]*cephfs.Snapshot, n)
	b.setup(ctx, "snapshotting CephFS sources", 1, n, both(
		func(ctx context.Context, i int) (err error) {
			if src.vols[i] == nil {
				return errSkip
			}
			r, err := b.fs.drv.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: b.name("fssnap-%d", i),
				SourceVolumeId: src.vols[i].GetVolumeId(), Secrets: b.fs.secrets})
			snaps[i] = r.GetSnapshot()
			return err
		},
		func(ctx context.Context, i int) error {
			if src.subs[i] == nil {
				return errSkip
			}
			snap := cephfs.Snapshot{Subvolume: *src.subs[i], Name: "snap"}
			floorSnaps[i] = &snap
			return b.fs.vols.CreateSnapshot(ctx, snap)
		}))
	restored := b.fsCopiesOf(ctx, "CephFS CreateVolume from snapshot", "fsrestored", n,
		func(i int) *csi.VolumeContentSource { return snapSource(snaps[i]) },
		func(ctx context.Context, i int, target cephfs.Subvolume) error {
			if floorSnaps[i] == nil {
				return errSkip
			}
			return b.fs.cloneToReady(ctx, *floorSnaps[i], target, untimed)
		})
	step := b.stepper("CephFS CreateVolume clone of a volume", 1)
	clones := b.fsCopiesOf(ctx, "CephFS CreateVolume clone of a volume", "fsclone", n,
		func(i int) *csi.VolumeContentSource { return volSource(src.vols[i]) },
		func(ctx context.Context, i int, target cephfs.Subvolume) error {
			if src.subs[i] == nil {
				return errSkip
			}
			return b.fs.cloneVolume(ctx, *src.subs[i], target, step)
		})
	b.fsDeleteVolumes(ctx, "", 1, restored)
	b.fsDeleteVolumes(ctx, "", 1, clones)
	b.setup(ctx, "deleting CephFS snapshots", 1, n, both(
		func(ctx context.Context, i int) error {
			if snaps[i] == nil {
				return errSkip
			}
			_, err := b.fs.drv.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snaps[i].GetSnapshotId(), Secrets: b.fs.secrets})
			return err
		},
		func(ctx context.Context, i int) error {
			if floorSnaps[i] == nil {
				return errSkip
			}
			return b.fs.vols.RemoveSnapshot(ctx, *floorSnaps[i])
		}))
	b.fsDeleteVolumes(ctx, "", 1, src)
}

// fsCopiesOf measures CreateVolume with a content source against a floor
// that makes the same copy into a subvolume of its own.
func (b *bench) fsCopiesOf(ctx context.Context, op, prefix string, n int, source func(i int) *csi.VolumeContentSource,
	floor func(ctx context.Context, i int, target cephfs.Subvolume) error) *fsSides {
	s := newFSSides(n)
	b.interleaved(ctx, op, 1, n,
		func(ctx context.Context, i int) (err error) {
			src := source(i)
			if src == nil {
				return errSkip
			}
			s.vols[i], err = b.fs.createVolume(ctx, b.name("%s-%d", prefix, i), b.opts.size, src)
			return err
		},
		func(ctx context.Context, i int) error {
			target := b.fs.subvolume(b.name("%s-%d", prefix, i))
			err := floor(ctx, i, target)
			if err == nil {
				s.subs[i] = &target
			}
			return err
		})
	return s
}

// cloneToReady starts the clone of snap into target and reads its state
// every fsPoll until it is complete.
func (f *fsBench) cloneToReady(ctx context.Context, snap cephfs.Snapshot, target cephfs.Subvolume, step stepFunc) error {
	return step("clone to ready", func() error {
		if err := f.vols.Clone(ctx, snap, target, ""); err != nil {
			return err
		}
		for {
			st, err := f.vols.CloneStatus(ctx, target)
			switch {
			case err != nil:
				return err
			case st.State == cephfs.CloneComplete:
				return nil
			case st.State.Done():
				return fmt.Errorf("clone into %s %s: %s", target, st.State, st.Failure)
			}
			time.Sleep(fsPoll)
		}
	})
}

// cloneVolume is what a clone of a volume takes: a snapshot of it, the
// clone of that snapshot until ready, and the snapshot's removal.
func (f *fsBench) cloneVolume(ctx context.Context, src, target cephfs.Subvolume, step stepFunc) error {
	snap := cephfs.Snapshot{Subvolume: src, Name: target.Name}
	if err := step("snapshot", func() error { return f.vols.CreateSnapshot(ctx, snap) }); err != nil {
		return err
	}
	if err := f.cloneToReady(ctx, snap, target, step); err != nil {
		return err
	}
	return step("snapshot removal", func() error { return f.vols.RemoveSnapshot(ctx, snap) })
}
