package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/ceph/go-ceph/rados"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Rados is the Journal kept in one RADOS pool and namespace.
type Rados struct {
	ioctx  *rados.IOContext
	prefix string
}

// NewRados returns the journal over ioctx whose object names begin with
// prefix. The caller owns ioctx.
func NewRados(ioctx *rados.IOContext, prefix string) *Rados {
	return &Rados{ioctx: ioctx, prefix: prefix}
}

// LookupName implements Journal.
func (j *Rados) LookupName(ctx context.Context, kind Kind, name string) (*Record, error) {
	vals, err := j.getKeys(ctx, nameObject(j.prefix, kind, name), recordKey)
	if err != nil {
		return nil, err
	}
	b, ok := vals[recordKey]
	if !ok {
		return nil, ErrNotFound
	}
	return decode(b)
}

// Lookup implements Journal.
func (j *Rados) Lookup(ctx context.Context, kind Kind, uuid string) (*Record, error) {
	vals, err := j.getKeys(ctx, directoryObject(j.prefix, kind), uuid)
	if err != nil {
		return nil, err
	}
	b, ok := vals[uuid]
	if !ok {
		return nil, ErrNotFound
	}
	return decode(b)
}

// getKeys reads omap keys in one read op; a missing object reads as empty.
func (j *Rados) getKeys(ctx context.Context, oid string, keys ...string) (map[string][]byte, error) {
	vals, _, err := readOmapKeys(ctx, j.ioctx, oid, keys)
	if vals == nil && err == nil {
		vals = map[string][]byte{}
	}
	return vals, err
}

// readOmapKeys reads omap keys of oid in one read op; found is false, and
// vals nil, when the object does not exist.
func readOmapKeys(ctx context.Context, ioctx *rados.IOContext, oid string, keys []string) (vals map[string][]byte, found bool, err error) {
	err = util.Run(ctx, "reading journal object "+oid, func() error {
		op := rados.CreateReadOp()
		defer op.Release()
		step := op.GetOmapValuesByKeys(keys)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			if errors.Is(err, rados.ErrNotFound) {
				return nil
			}
			return err
		}
		found, vals = true, map[string][]byte{}
		for {
			kv, err := step.Next()
			if err != nil || kv == nil {
				return err
			}
			vals[kv.Key] = kv.Value
		}
	})
	return vals, found, err
}

// Reserve implements Journal: an exclusive create of the name object wins
// the name cluster-wide; the directory entry follows.
func (j *Rados) Reserve(ctx context.Context, rec *Record) error {
	b, err := encode(rec)
	if err != nil {
		return err
	}
	oid := nameObject(j.prefix, rec.Kind, rec.Name)
	err = util.Run(ctx, "reserving "+oid, func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.Create(rados.CreateExclusive)
		op.SetOmap(map[string][]byte{recordKey: b})
		return op.Operate(j.ioctx, oid, rados.OperationNoFlag)
	})
	if errors.Is(err, rados.ErrObjectExists) {
		return fmt.Errorf("%w: %s %q", ErrNameTaken, rec.Kind, rec.Name)
	}
	if err != nil {
		return err
	}
	return j.writeDirectory(ctx, rec.Kind, rec.UUID, b)
}

func (j *Rados) writeDirectory(ctx context.Context, kind Kind, uuid string, b []byte) error {
	oid := directoryObject(j.prefix, kind)
	return util.Run(ctx, "writing "+oid, func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.Create(rados.CreateIdempotent)
		op.SetOmap(map[string][]byte{uuid: b})
		return op.Operate(j.ioctx, oid, rados.OperationNoFlag)
	})
}

// Repair rewrites the directory entry of rec, for a reservation whose
// directory write was lost to a crash.
func (j *Rados) Repair(ctx context.Context, rec *Record) error {
	b, err := encode(rec)
	if err != nil {
		return err
	}
	return j.writeDirectory(ctx, rec.Kind, rec.UUID, b)
}

// Remove implements Journal. The directory entry goes first: a crash in
// between leaves a name object whose retry finds no image and is cleaned.
func (j *Rados) Remove(ctx context.Context, rec *Record) error {
	dir := directoryObject(j.prefix, rec.Kind)
	err := util.Run(ctx, "removing from "+dir, func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.RmOmapKeys([]string{rec.UUID})
		return op.Operate(j.ioctx, dir, rados.OperationNoFlag)
	})
	if err != nil && !errors.Is(err, rados.ErrNotFound) {
		return err
	}
	oid := nameObject(j.prefix, rec.Kind, rec.Name)
	err = util.Run(ctx, "removing "+oid, func() error { return j.ioctx.Delete(oid) })
	if err != nil && !errors.Is(err, rados.ErrNotFound) {
		return err
	}
	return nil
}

// List implements Journal.
func (j *Rados) List(ctx context.Context, kind Kind, startAfter string, max int) ([]*Record, error) {
	oid := directoryObject(j.prefix, kind)
	vals, err := util.Do(ctx, "listing "+oid, func() (map[string][]byte, error) {
		return j.ioctx.GetOmapValues(oid, startAfter, "", int64(max))
	})
	if errors.Is(err, rados.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]*Record, 0, len(vals))
	for _, b := range vals {
		rec, err := decode(b)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	sortByUUID(out)
	return out, nil
}
