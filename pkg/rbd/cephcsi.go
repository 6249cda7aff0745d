package rbd

// Serving, in place, the volumes and snapshots ceph-csi provisioned
// (docs/ceph-csi-format.md). Its journal lives beside Pelagic's, in the
// pool a volume ID names and the cluster's RADOS namespace; an ID Pelagic's
// journal does not know is looked up there. Nothing of ceph-csi's is
// rewritten: its entries are read, and removed with what they name when
// Pelagic deletes it. New volumes and snapshots always go to Pelagic's own
// journal, whatever they are made from.
//
// What differs from Pelagic's own:
//   - its records hold no size, parameters or creation time: they are read
//     from the image where a call needs them;
//   - a ceph-csi snapshot is an image (csi-snap-<uuid>, a clone of the
//     source) holding one snapshot of the same name: its record's Backing
//     and SnapName are that image and snapshot, so restoring clones from it
//     as from any snapshot, and deleting it removes the image too;
//   - a clone of a volume is chained through "<image>-temp", which has no
//     entry: deleting the volume deletes it;
//   - ceph-csi left deleted images in the trash for the mgr to remove once
//     their children went; Pelagic removes a trashed parent when it deletes
//     the last image that needed it.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// cephCSITempSuffix ends the name of the image between a ceph-csi clone
// and its source.
const cephCSITempSuffix = "-temp"

// cephCSIJournal is ceph-csi's journal in pool.
func (c *Controller) cephCSIJournal(pool Pool) journal.Journal {
	return pool.CephCSI(c.opts.CephCSIInstanceID)
}

// journalOf is the journal rec was read from, which its removal goes to.
func (c *Controller) journalOf(pool Pool, rec *journal.Record) journal.Journal {
	if rec.FromCephCSI() {
		return c.cephCSIJournal(pool)
	}
	return pool
}

// unknownID is the NotFound of an ID that names an existing pool in which
// no journal has its entry. DeleteVolume looks further (deleteUnknown).
type unknownID struct {
	id   volumeid.ID
	pool Pool
	// dangling is what an incomplete ceph-csi entry of the ID held, or nil.
	dangling *journal.Record
	status   *status.Status
}

func (e *unknownID) Error() string              { return e.status.Message() }
func (e *unknownID) GRPCStatus() *status.Status { return e.status }

// resolveCephCSI looks up in ceph-csi's journal an ID Pelagic's does not
// know. A snapshot's record is completed from its image.
func (c *Controller) resolveCephCSI(ctx context.Context, kind journal.Kind, id string, vid volumeid.ID, pool Pool) (*journal.Record, error) {
	rec, err := c.cephCSIJournal(pool).Lookup(ctx, kind, vid.UUID)
	if err == nil && rec.Backing == "" {
		err = journal.ErrDangling
	}
	switch {
	case errors.Is(err, journal.ErrNotFound):
		u := &unknownID{id: vid, pool: pool, status: status.Newf(codes.NotFound, "%s %q does not exist", kind, id)}
		if errors.Is(err, journal.ErrDangling) {
			u.dangling = rec
		}
		return nil, u
	case err != nil:
		return nil, volume.Status(err)
	}
	if kind == journal.Snapshot {
		if err := completeCephCSISnapshot(ctx, vid.ClusterID, pool, rec); err != nil {
			return nil, volume.Status(err)
		}
	}
	return rec, nil
}

// completeCephCSISnapshot fills in what ceph-csi's journal leaves out of a
// snapshot: its size and creation time (its image's, as ceph-csi answered
// them), the image ID ceph-csi writes only once the image exists, and the
// ID of its source volume. A snapshot whose image is gone stays as read, so
// that deleting it still removes its entry.
func completeCephCSISnapshot(ctx context.Context, clusterID string, pool Pool, rec *journal.Record) error {
	rec.Source = volumeid.OfBacking(clusterID, pool.ID(), rec.SourceBacking)
	info, err := pool.Stat(ctx, rec.Backing)
	if errors.Is(err, ErrImageNotFound) && rec.BackingID != "" {
		info, err = pool.StatByID(ctx, rec.BackingID) // in the trash: ceph-csi's deletion was cut short
	}
	if errors.Is(err, ErrImageNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	rec.BackingID = cmp.Or(rec.BackingID, info.ID)
	rec.SizeBytes, rec.Created = info.Size, info.Created
	return nil
}

// cephCSIVolume returns the volume ceph-csi provisioned in pool under the
// request's name, nil when it has none. It checks only the size: ceph-csi
// recorded neither parameters nor content source. A reservation ceph-csi
// left without its image is taken back, as ceph-csi itself does, and the
// request then creates a Pelagic volume.
func (c *Controller) cephCSIVolume(ctx context.Context, cl Cluster, pool Pool, req *csi.CreateVolumeRequest,
	params *VolumeParams, size int64) (*csi.Volume, error) {
	rec, err := c.cephCSIJournal(pool).LookupName(ctx, journal.Volume, req.GetName())
	switch {
	case errors.Is(err, journal.ErrDangling):
		return nil, c.undoCephCSIVolume(ctx, pool, rec)
	case errors.Is(err, journal.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, volume.Status(err)
	}
	info, err := pool.Stat(ctx, rec.Backing)
	if errors.Is(err, ErrImageNotFound) {
		return nil, c.undoCephCSIVolume(ctx, pool, rec)
	}
	if err != nil {
		return nil, volume.Status(err)
	}
	if limit := req.GetCapacityRange().GetLimitBytes(); info.Size < size || (limit > 0 && info.Size > limit) {
		return nil, status.Errorf(codes.AlreadyExists,
			"volume %q already exists (provisioned by ceph-csi, image %s/%s) with size %d bytes; this request asks for %d",
			req.GetName(), pool.Name(), rec.Backing, info.Size, size)
	}
	rec.SizeBytes = info.Size
	return c.volumeOf(cl, pool, rec, params, req.GetVolumeContentSource()), nil
}

// undoCephCSIVolume takes back a reservation ceph-csi left without its
// image: the "-temp" image of a clone cut short, then the entry.
func (c *Controller) undoCephCSIVolume(ctx context.Context, pool Pool, rec *journal.Record) error {
	klog.FromContext(ctx).Info("removing a reservation ceph-csi left without its image", "name", rec.Name, "uuid", rec.UUID)
	if rec.Backing != "" {
		if err := removeImage(ctx, pool, rec.Backing+cephCSITempSuffix); err != nil {
			return volume.Status(err)
		}
	}
	return volume.Status(c.cephCSIJournal(pool).Remove(ctx, rec))
}

// cephCSISnapshot returns the snapshot ceph-csi took under the request's
// name of a volume in src's pool, nil when it has none. A reservation
// whose image is gone is taken back, with the source's snapshot of that
// name should ceph-csi have been cut short before cloning it.
func (c *Controller) cephCSISnapshot(ctx context.Context, src *resolved, req *csi.CreateSnapshotRequest) (*csi.Snapshot, error) {
	if !src.rec.FromCephCSI() {
		// ceph-csi cannot resolve a volume Pelagic made (its journal is
		// Pelagic's own), so it never snapshotted one: no lookup.
		return nil, nil
	}
	j := c.cephCSIJournal(src.pool)
	rec, err := j.LookupName(ctx, journal.Snapshot, req.GetName())
	switch {
	case errors.Is(err, journal.ErrDangling):
		return nil, volume.Status(j.Remove(ctx, rec))
	case errors.Is(err, journal.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, volume.Status(err)
	}
	if err := completeCephCSISnapshot(ctx, src.id.ClusterID, src.pool, rec); err != nil {
		return nil, volume.Status(err)
	}
	if rec.Created.IsZero() { // no image
		if info, err := src.pool.Stat(ctx, rec.SourceBacking); err == nil {
			if err := src.pool.RemoveSnap(ctx, info.ID, rec.Backing); err != nil {
				return nil, volume.Status(err)
			}
		}
		return nil, volume.Status(j.Remove(ctx, rec))
	}
	if rec.Source != req.GetSourceVolumeId() {
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists (taken by ceph-csi) of another volume, %s",
			req.GetName(), rec.Source)
	}
	id := volumeid.ID{ClusterID: src.id.ClusterID, PoolID: src.pool.ID(), UUID: rec.UUID}
	return snapshotOf(id.String(), rec, SnapInfo{Size: rec.SizeBytes, Created: rec.Created}), nil
}

// deleteCephCSISnapshot removes a ceph-csi snapshot as ceph-csi does: the
// snapshot in its image (into the trash namespace while restores need
// it), the image, with the trashed ancestors it was the last to need (its
// source volume, deleted since), then the entry, so that a retry finishes
// what a crash cut short.
func (c *Controller) deleteCephCSISnapshot(ctx context.Context, r *resolved) error {
	if r.rec.BackingID != "" {
		if err := r.pool.RemoveSnap(ctx, r.rec.BackingID, r.rec.SnapName); err != nil {
			return err
		}
	}
	if err := removeImage(ctx, r.pool, r.rec.Backing); err != nil {
		return err
	}
	return c.cephCSIJournal(r.pool).Remove(ctx, r.rec)
}

// deleteUnknown answers a DeleteVolume whose ID names an existing pool but
// no journal entry. OK only once nothing of such a volume is left: an
// incomplete entry ceph-csi left is removed, and an image whose name ends
// with the ID's UUID (the volume's, under any prefix) is refused by name:
// nothing records that it belongs to this volume, and deleting data on a
// guess cannot be undone. The ID of a snapshot names no volume: OK.
func (c *Controller) deleteUnknown(ctx context.Context, u *unknownID) (*csi.DeleteVolumeResponse, error) {
	unlock, err := c.locks.Lock(string(journal.Volume) + "/" + u.id.String())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if u.dangling != nil {
		if err := c.cephCSIJournal(u.pool).Remove(ctx, u.dangling); err != nil {
			return nil, volume.Status(err)
		}
	}
	for _, j := range Journals(u.pool, c.opts.CephCSIInstanceID) {
		if _, err := j.Lookup(ctx, journal.Snapshot, u.id.UUID); err == nil {
			return &csi.DeleteVolumeResponse{}, nil
		}
	}
	images, err := u.pool.ListImages(ctx)
	if err != nil {
		return nil, volume.Status(err)
	}
	err = volume.Leftover{ID: u.id, InstanceID: c.opts.CephCSIInstanceID, What: "image", Names: images,
		Where: "pool " + u.pool.Name() + namespaceSuffix(u.pool.Namespace())}.Check()
	if err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func namespaceSuffix(ns string) string {
	if ns == "" {
		return ""
	}
	return " (namespace " + ns + ")"
}

// cephCSIFacts are what ValidateVolumeCapabilities checks a ceph-csi
// volume against: its journal records no parameters, so they are read from
// its image, as NodeStage and CreateVolume would see them.
func cephCSIFacts(ctx context.Context, r *resolved, info ImageInfo, namespace string) (volumeFacts, error) {
	params := map[string]string{ParamClusterID: r.id.ClusterID, ParamPool: r.pool.Name(),
		ParamImageFeatures: featureNames(info.Features), ParamNamePrefix: strings.TrimSuffix(r.rec.Backing, r.rec.UUID)}
	if info.DataPoolID != r.pool.ID() {
		name, err := r.cluster.PoolName(ctx, info.DataPoolID)
		if err != nil {
			return volumeFacts{}, err
		}
		params[ParamDataPool] = name
	}
	if info.ObjectSize != 0 && info.ObjectSize != defaultObjectSize {
		params[ParamObjectSize] = strconv.FormatUint(info.ObjectSize, 10)
	}
	if info.StripeCount > 1 {
		params[ParamStripeUnit] = strconv.FormatUint(info.StripeUnit, 10)
		params[ParamStripeCount] = strconv.FormatUint(info.StripeCount, 10)
	}
	return volumeFacts{clusterID: r.id.ClusterID, pool: r.pool.Name(), namespace: namespace, image: r.rec.Backing,
		params: params, cephCSI: true}, nil
}

// featureNames names the features of a feature mask a class can ask for,
// as journalParams spells them; the others (data-pool, operations) follow
// from the class's other parameters or from what was done to the image.
func featureNames(mask uint64) string {
	var names []string
	for _, name := range sortedKeys(knownFeatures) {
		if mask&knownFeatures[name] != 0 {
			names = append(names, name)
		}
	}
	return strings.Join(names, ",")
}

// cephCSIContextKey reports whether a volume context key of a ceph-csi
// volume is a class parameter Pelagic accepts: ceph-csi returns every one
// (and journalPool, set or not).
func cephCSIContextKey(key, value string) bool {
	if r, refused := refusedParams[key]; refused {
		return r.accepts(value)
	}
	return readParams[key] || inertParams[key]
}

// cephCSIHolderHint explains an unrecorded client on a ceph-csi volume.
func cephCSIHolderHint(rec *journal.Record, holders []Holder) string {
	if !rec.FromCephCSI() {
		return ""
	}
	for _, h := range holders {
		if h.State == HolderUnknown {
			return fmt.Sprintf(" (volume %s was provisioned by ceph-csi: a client no node recorded is most likely a mapping "+
				"ceph-csi's node plugin made; it goes when that node unstages the volume)", rec.Name)
		}
	}
	return ""
}

// What pelagicctl needs to show ceph-csi's volumes beside Pelagic's; the
// controller goes by the same journals.

// Journals are the journals of pool that hold volumes and snapshots:
// Pelagic's, then ceph-csi's under instanceID (journal.DefaultCephCSIInstance
// unless ceph-csi ran with another --instanceid), whose records report
// FromCephCSI. Their UUIDs make volume IDs the same way.
func Journals(pool Pool, instanceID string) []journal.Journal {
	return []journal.Journal{pool, pool.CephCSI(instanceID)}
}

// LookupVolume reads the record of the volume with uuid in pool, from
// Pelagic's journal or else ceph-csi's (see Journals); journal.ErrNotFound
// when neither holds it whole.
func LookupVolume(ctx context.Context, pool Pool, instanceID, uuid string) (*journal.Record, error) {
	rec, err := journal.Layered{Own: pool, CephCSI: pool.CephCSI(instanceID)}.Lookup(ctx, journal.Volume, uuid)
	if err != nil {
		return nil, err
	}
	return rec, nil
}
