package journal

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// Layered is Pelagic's own journal over ceph-csi's in the same place, as a
// driver that replaced ceph-csi reads them: a lookup tries Pelagic's first,
// then ceph-csi's (whose records report FromCephCSI); new names are
// reserved in Pelagic's only; a record is removed from the journal it was
// read from; a listing holds both, in UUID order. Incomplete ceph-csi
// entries look like no entry (ErrDangling is an ErrNotFound).
type Layered struct {
	Own, CephCSI Journal
}

var _ Journal = Layered{}

// LookupName implements Journal.
func (l Layered) LookupName(ctx context.Context, kind Kind, name string) (*Record, error) {
	rec, err := l.Own.LookupName(ctx, kind, name)
	if !errors.Is(err, ErrNotFound) {
		return rec, err
	}
	return l.CephCSI.LookupName(ctx, kind, name)
}

// Lookup implements Journal.
func (l Layered) Lookup(ctx context.Context, kind Kind, uuid string) (*Record, error) {
	rec, err := l.Own.Lookup(ctx, kind, uuid)
	if !errors.Is(err, ErrNotFound) {
		return rec, err
	}
	return l.CephCSI.Lookup(ctx, kind, uuid)
}

// Reserve implements Journal: in Pelagic's own, unless ceph-csi's holds
// the name (ErrNameTaken), so that a caller who reserves first and looks a
// name up only when it is taken finds ceph-csi's record.
func (l Layered) Reserve(ctx context.Context, rec *Record) error {
	_, err := l.CephCSI.LookupName(ctx, rec.Kind, rec.Name)
	switch {
	case err == nil:
		return fmt.Errorf("%w: %s %q is ceph-csi's", ErrNameTaken, rec.Kind, rec.Name)
	case !errors.Is(err, ErrNotFound):
		return err
	}
	return l.Own.Reserve(ctx, rec)
}

// Repair implements Journal: in Pelagic's own.
func (l Layered) Repair(ctx context.Context, rec *Record) error { return l.Own.Repair(ctx, rec) }

// Remove implements Journal, in the journal rec was read from.
func (l Layered) Remove(ctx context.Context, rec *Record) error { return l.of(rec).Remove(ctx, rec) }

func (l Layered) of(rec *Record) Journal {
	if rec.FromCephCSI() {
		return l.CephCSI
	}
	return l.Own
}

// List implements Journal: a page of each, merged. UUIDs are random, so
// the two never share one.
func (l Layered) List(ctx context.Context, kind Kind, startAfter string, max int) ([]*Record, error) {
	own, err := l.Own.List(ctx, kind, startAfter, max)
	if err != nil {
		return nil, err
	}
	theirs, err := l.CephCSI.List(ctx, kind, startAfter, max)
	if err != nil {
		return nil, err
	}
	all := append(own, theirs...)
	sort.Slice(all, func(i, j int) bool { return all[i].UUID < all[j].UUID })
	if max > 0 && len(all) > max {
		all = all[:max]
	}
	return all, nil
}
