package ctl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// target is what a VOLUME or POOL argument names.
type target struct {
	arg      string
	volumeID *volumeid.ID // set when arg is a CSI volume ID
	pool     string       // set when arg is POOL or POOL/IMAGE
	image    string       // set when arg is POOL/IMAGE
}

// parseTarget reads a CSI volume ID, POOL/IMAGE, or (unless wantImage) POOL.
func parseTarget(arg string, wantImage bool) (target, error) {
	t := target{arg: arg}
	if strings.HasPrefix(arg, "0001-") {
		id, err := volumeid.Parse(arg)
		if err != nil {
			return t, usagef("%v", err)
		}
		t.volumeID = &id
		return t, nil
	}
	pool, image, hasImage := strings.Cut(arg, "/")
	switch {
	case pool == "" || (hasImage && (image == "" || strings.Contains(image, "/"))):
		return t, usagef("%q is neither a CSI volume ID (0001-...) nor POOL/IMAGE", arg)
	case wantImage && !hasImage:
		return t, usagef("%q names no image: give a CSI volume ID (0001-...) or POOL/IMAGE", arg)
	case !wantImage && hasImage:
		return t, usagef("%q names an image: give a POOL or a CSI volume ID", arg)
	}
	t.pool, t.image = pool, image
	return t, nil
}

// session is one connected command run.
type session struct {
	cluster   rbd.Cluster
	namespace string    // the RADOS namespace the cluster config gives for RBD
	now       time.Time // when the command started, to tell expired fences
	force     bool
}

// volume is an opened image and, when known, its CSI volume ID.
type volume struct {
	pool  rbd.Pool
	image string
	id    string
}

// openPool opens the target's pool: the one named, or the volume ID's.
func (s *session) openPool(ctx context.Context, t target) (rbd.Pool, error) {
	name := t.pool
	if t.volumeID != nil {
		var err error
		if name, err = s.cluster.PoolName(ctx, t.volumeID.PoolID); err != nil {
			return nil, fmt.Errorf("volume %s: %w", t.arg, err)
		}
	}
	return s.cluster.Pool(ctx, name, s.namespace)
}

// openVolume resolves the target to its image through the journal, as the
// controller does, or takes POOL/IMAGE as given.
func (s *session) openVolume(ctx context.Context, t target) (*volume, error) {
	pool, err := s.openPool(ctx, t)
	if err != nil {
		return nil, err
	}
	if t.volumeID == nil {
		return &volume{pool: pool, image: t.image}, nil
	}
	rec, err := pool.Lookup(ctx, journal.Volume, t.volumeID.UUID)
	if errors.Is(err, journal.ErrNotFound) {
		return nil, fmt.Errorf("volume %s is not in the journal of pool %s: deleted, or not a Pelagic volume", t.arg, pool.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", t.arg, err)
	}
	return &volume{pool: pool, image: rec.Backing, id: t.arg}, nil
}

// volumeIDOf finds the CSI volume ID of an image given as POOL/IMAGE from
// its owner record and the journal. It is only for display, so any failure
// just leaves the ID unknown.
func (s *session) volumeIDOf(ctx context.Context, pool rbd.Pool, image string, owner *rbd.Owner) string {
	if owner == nil || owner.Name == "" {
		return ""
	}
	rec, err := pool.LookupName(ctx, journal.Volume, owner.Name)
	if err != nil || rec.Backing != image {
		return ""
	}
	return volumeid.ID{ClusterID: s.cluster.ClusterID(), PoolID: pool.ID(), UUID: rec.UUID}.String()
}

// forEachVolume calls fn for every volume in the pool's journal, in UUID
// order, a page at a time so a large pool is never read in one call.
func (s *session) forEachVolume(ctx context.Context, pool rbd.Pool, fn func(rec *journal.Record, id string)) error {
	err := journal.ForEach(ctx, pool, journal.Volume, 256, func(rec *journal.Record) {
		fn(rec, volumeid.ID{ClusterID: s.cluster.ClusterID(), PoolID: pool.ID(), UUID: rec.UUID}.String())
	})
	if err != nil {
		return fmt.Errorf("listing the volumes of pool %s: %w", pool.Name(), err)
	}
	return nil
}
