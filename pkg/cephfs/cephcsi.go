package cephfs

// Serving, in place, the subvolumes and snapshots ceph-csi provisioned
// (docs/ceph-csi-format.md). Its journal lives beside Pelagic's, in the
// filesystem's metadata pool and the cluster's CephFS RADOS namespace;
// the controller reads both as one (journal.Layered), so every call finds
// ceph-csi's volumes as its own. Nothing of ceph-csi's is rewritten: its
// entries are read, and removed with what they name when Pelagic deletes
// it. New volumes and snapshots always go to Pelagic's own journal.
//
// ceph-csi's records hold no size, parameters, content source or creation
// time: cephCSIRecords completes them from the subvolume, the cluster's
// subvolume group and the names (a snapshot's source is the volume whose
// subvolume it was taken of).

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// cephCSIRecords is ceph-csi's journal of one filesystem, whose records it
// completes to read as Pelagic's: a volume's Params name the filesystem,
// group and name prefix, its size is its quota; a snapshot's Backing is
// the subvolume it was taken of and SnapName its subvolume snapshot,
// Source the ID of that subvolume's volume, its size that subvolume's
// quota and its creation time the snapshot's.
type cephCSIRecords struct {
	journal.Journal
	clusterID string
	fs        FSInfo
	group     string
	vols      Volumes
}

func (j cephCSIRecords) LookupName(ctx context.Context, kind journal.Kind, name string) (*journal.Record, error) {
	rec, err := j.Journal.LookupName(ctx, kind, name)
	if err != nil {
		return rec, err
	}
	return rec, j.complete(ctx, rec)
}

func (j cephCSIRecords) Lookup(ctx context.Context, kind journal.Kind, uuid string) (*journal.Record, error) {
	rec, err := j.Journal.Lookup(ctx, kind, uuid)
	if err != nil {
		return rec, err
	}
	return rec, j.complete(ctx, rec)
}

func (j cephCSIRecords) List(ctx context.Context, kind journal.Kind, startAfter string, max int) ([]*journal.Record, error) {
	recs, err := j.Journal.List(ctx, kind, startAfter, max)
	for _, rec := range recs {
		if err == nil {
			err = j.complete(ctx, rec)
		}
	}
	return recs, err
}

// complete fills in what ceph-csi's journal leaves out. A subvolume or
// snapshot that is gone leaves the record as read, so that deleting it
// still removes the entry.
func (j cephCSIRecords) complete(ctx context.Context, rec *journal.Record) error {
	rec.Params = map[string]string{ParamFSName: j.fs.Name, ParamSubvolumeGroup: j.group}
	if rec.Kind == journal.Volume {
		rec.Params[ParamNamePrefix] = strings.TrimSuffix(rec.Backing, rec.UUID)
	} else {
		rec.Backing, rec.SnapName = rec.SourceBacking, rec.Backing
		rec.Source = volumeid.OfBacking(j.clusterID, j.fs.ID, rec.SourceBacking)
	}
	sv := Subvolume{FS: j.fs.Name, Group: j.group, Name: rec.Backing}
	info, err := j.vols.Subvolume(ctx, sv)
	if err != nil {
		return ignoreGone(err)
	}
	rec.SizeBytes, rec.Created = info.BytesQuota, info.Created
	if rec.Kind == journal.Snapshot {
		snap, err := j.vols.Snapshot(ctx, Snapshot{Subvolume: sv, Name: rec.SnapName})
		if err != nil {
			return ignoreGone(err)
		}
		rec.Created = snap.Created
	}
	return nil
}

// ignoreGone: what is gone, or not made yet (a clone in progress), has
// nothing more to tell.
func ignoreGone(err error) error {
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrInProgress) {
		return nil
	}
	return err
}

// takeBackHalfCephCSI removes what ceph-csi left of a request under name
// that it never finished, as ceph-csi itself does on the retry: a directory
// key without its entry, or a volume's entry without its subvolume. The
// request then makes a Pelagic volume or snapshot. (A snapshot's entry
// without its subvolume snapshot is finished in place by CreateSnapshot.)
func takeBackHalfCephCSI(ctx context.Context, j journal.Journal, v Volumes, kind journal.Kind, name string) error {
	rec, err := j.LookupName(ctx, kind, name)
	switch {
	case errors.Is(err, journal.ErrDangling):
		return j.Remove(ctx, rec)
	case errors.Is(err, journal.ErrNotFound):
		return nil
	case err != nil || !rec.FromCephCSI() || kind != journal.Volume:
		return err
	}
	_, err = v.Subvolume(ctx, Subvolume{FS: rec.Params[ParamFSName], Group: rec.Params[ParamSubvolumeGroup], Name: rec.Backing})
	if errors.Is(err, ErrNotFound) {
		return j.Remove(ctx, rec)
	}
	return nil
}

// contextParams are the parameters a CreateVolume answers the volume
// context with: the record's, or for a ceph-csi volume, which recorded
// none, the request's.
func contextParams(rec *journal.Record, params *VolumeParams) map[string]string {
	if rec.FromCephCSI() {
		return params.journalParams()
	}
	return rec.Params
}

// describes reports whether parameters want describe the volume: equal to
// its record's, or, for a ceph-csi volume, agreeing on what it recorded.
func describes(rec *journal.Record, want map[string]string) bool {
	for k, v := range rec.Params {
		if want[k] != v {
			return false
		}
	}
	return rec.FromCephCSI() || len(want) == len(rec.Params)
}

// deleteUnknown answers a DeleteVolume whose ID no journal knows: OK once
// no subvolume named after its UUID is left in the cluster's subvolume
// group of the filesystem it names (or that filesystem is gone), but for
// one the volume's deletion left to its snapshots.
func (c *Controller) deleteUnknown(ctx context.Context, req *csi.DeleteVolumeRequest, _ error) (*csi.DeleteVolumeResponse, error) {
	unlock, err := c.locks.Lock(string(journal.Volume) + "/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	vid, err := volumeid.Parse(req.GetVolumeId())
	if err != nil {
		return &csi.DeleteVolumeResponse{}, nil // names nothing
	}
	cc, err := c.opts.Config.Cluster(vid.ClusterID)
	if err != nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	cl, err := c.clusterFor(ctx, vid.ClusterID, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	fs, err := c.fileSystem(ctx, cl, "#"+strconv.FormatInt(vid.PoolID, 10))
	if errors.Is(err, ceph.ErrPoolNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	names, err := liveSubvolumes(ctx, cl.Volumes(), fs.Name, cc.SubvolumeGroup(), vid.UUID)
	if err != nil {
		return nil, toStatus(err)
	}
	err = volume.Leftover{ID: vid, InstanceID: c.opts.CephCSIInstanceID, What: "subvolume", Names: names,
		Where: "subvolume group " + cc.SubvolumeGroup() + " of filesystem " + fs.Name}.Check()
	if err == nil {
		err = c.removeDangling(ctx, cl, fs, vid.UUID)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// removeDangling removes what is left of an entry ceph-csi left incomplete
// for uuid (a deletion it never finished): nothing else would.
func (c *Controller) removeDangling(ctx context.Context, cl Cluster, fs FSInfo, uuid string) error {
	j, err := c.journal(ctx, cl, fs)
	if err != nil {
		return err
	}
	rec, err := j.Lookup(ctx, journal.Volume, uuid)
	if errors.Is(err, journal.ErrDangling) {
		return j.Remove(ctx, rec)
	}
	return nil
}

// liveSubvolumes names the subvolumes of a group named after uuid, but for
// those a deletion left snapshot-retained: they go with their last snapshot.
func liveSubvolumes(ctx context.Context, v Volumes, fs, group, uuid string) ([]string, error) {
	names, err := v.ListSubvolumes(ctx, fs, group)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var live []string
	for _, name := range names {
		if !strings.HasSuffix(name, uuid) {
			continue
		}
		info, err := v.Subvolume(ctx, Subvolume{FS: fs, Group: group, Name: name})
		switch {
		case errors.Is(err, ErrNotFound):
			continue // removed meanwhile
		case err != nil && !errors.Is(err, ErrInProgress): // a clone's target is live
			return nil, err
		}
		if info.State != StateSnapRetained {
			live = append(live, name)
		}
	}
	return live, nil
}
