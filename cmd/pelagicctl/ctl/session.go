package ctl

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// session is one command run: what it is connected to.
type session struct {
	tool      Tool
	opts      *options
	raw       rbd.Cluster // as the connector returned it
	cluster   rbd.Cluster // every call bounded by --timeout
	cc        *ceph.ClusterConfig
	namespace string     // the RADOS namespace the cluster config gives for RBD
	now       time.Time  // when the command started, to tell expired fences
	ref       *volumeRef // the VOLUME argument, resolved through Kubernetes
	kube      *kubeView  // nil without Kubernetes access
	kubeNote  string     // why there is none
	closers   []func()
}

func (s *session) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// volumeIDOf parses arg as a CSI volume ID.
func volumeIDOf(arg string) (volumeid.ID, bool) {
	if !strings.HasPrefix(arg, "0001-") {
		return volumeid.ID{}, false
	}
	id, err := volumeid.Parse(arg)
	return id, err == nil
}

// openPool opens a pool of RBD images in the configured namespace.
func (s *session) openPool(ctx context.Context, name string) (rbd.Pool, error) {
	return s.cluster.Pool(ctx, name, s.namespace)
}

// pools lists the pools to look at: --pool (or the one given), else every
// pool that holds a Pelagic journal.
func (s *session) pools(ctx context.Context, given string) ([]rbd.Pool, error) {
	names := []string{given}
	if given == "" && s.opts.pool != "" {
		names = []string{s.opts.pool}
	}
	if names[0] == "" {
		var err error
		dirs := append(journal.DirectoryObjects(rbd.JournalPrefix), journal.CephCSIDirectoryObjects(s.opts.instanceID)...)
		names, err = s.cluster.PoolsHolding(ctx, s.namespace, dirs...)
		if err != nil {
			return nil, fmt.Errorf("looking for pools with a Pelagic journal: %w", err)
		}
		sort.Strings(names)
	}
	out := make([]rbd.Pool, 0, len(names))
	for _, n := range names {
		p, err := s.openPool(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", n, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// idOf is the CSI volume ID of a journal record in pool.
func (s *session) idOf(pool rbd.Pool, rec *journal.Record) string {
	return volumeid.ID{ClusterID: s.cluster.ClusterID(), PoolID: pool.ID(), UUID: rec.UUID}.String()
}

// forEachVolume calls fn for every volume in the pool's journals,
// Pelagic's and then ceph-csi's, each in UUID order, a page at a time so a
// large pool is never read in one call.
func (s *session) forEachVolume(ctx context.Context, pool rbd.Pool, fn func(rec *journal.Record, id string)) error {
	for _, j := range rbd.Journals(pool, s.opts.instanceID) {
		err := journal.ForEach(ctx, j, journal.Volume, 256, func(rec *journal.Record) {
			if rec.Backing != "" { // a ceph-csi reservation it never completed
				fn(rec, s.idOf(pool, rec))
			}
		})
		if err != nil {
			return fmt.Errorf("listing the volumes of pool %s: %w", pool.Name(), err)
		}
	}
	return nil
}

// volumeIDFor finds the CSI volume ID of an image given as POOL/IMAGE from
// its owner record and the journal. It is only for display, so any failure
// just leaves the ID unknown.
func (s *session) volumeIDFor(ctx context.Context, pool rbd.Pool, image string, owner *rbd.Owner) string {
	if owner == nil || owner.Name == "" {
		return ""
	}
	for _, j := range rbd.Journals(pool, s.opts.instanceID) {
		if rec, err := j.LookupName(ctx, journal.Volume, owner.Name); err == nil && rec.Backing == image {
			return s.idOf(pool, rec)
		}
	}
	return ""
}

// image is an opened RBD image and, when known, its CSI volume ID.
type image struct {
	pool rbd.Pool
	name string
	id   string
}

func (i *image) spec() string { return i.pool.Name() + "/" + i.name }

// openImage finds the RBD image of a resolved volume: through the journal
// as the controller does, or as POOL/IMAGE given, or from the PV.
func (s *session) openImage(ctx context.Context, ref *volumeRef) (*image, error) {
	if ref.Pool != "" && ref.Image != "" && ref.VolumeID == "" {
		pool, err := s.openPool(ctx, ref.Pool)
		if err != nil {
			return nil, err
		}
		return &image{pool: pool, name: ref.Image}, nil
	}
	vid, ok := volumeIDOf(ref.VolumeID)
	if !ok {
		return nil, fmt.Errorf("%s resolved to no volume ID and no POOL/IMAGE", ref.Arg)
	}
	name, err := s.cluster.PoolName(ctx, vid.PoolID)
	if errors.Is(err, ceph.ErrPoolNotFound) && ref.Pool != "" {
		name = ref.Pool
	} else if err != nil {
		return nil, fmt.Errorf("volume %s: %w", ref.VolumeID, err)
	}
	pool, err := s.openPool(ctx, name)
	if err != nil {
		return nil, err
	}
	rec, err := rbd.LookupVolume(ctx, pool, s.opts.instanceID, vid.UUID)
	switch {
	case err == nil:
		return &image{pool: pool, name: rec.Backing, id: ref.VolumeID}, nil
	case errors.Is(err, journal.ErrNotFound) && ref.Image != "":
		ref.note("volume %s is not in Pelagic's journal of pool %s: the image is the PV's imageName", ref.VolumeID, name)
		return &image{pool: pool, name: ref.Image, id: ref.VolumeID}, nil
	case errors.Is(err, journal.ErrNotFound):
		return nil, fmt.Errorf("volume %s is in neither Pelagic's nor ceph-csi's journal of pool %s: deleted, "+
			"another driver's, or a CephFS volume (give its PVC or PV, or --fs)", ref.VolumeID, name)
	}
	return nil, fmt.Errorf("volume %s: %w", ref.VolumeID, err)
}
