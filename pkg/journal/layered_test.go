package journal

import (
	"context"
	"errors"
	"testing"
)

func TestLayered(t *testing.T) {
	ctx := context.Background()
	own, theirs := NewMemory(), NewMemory()
	theirs.Origin = OriginCephCSI
	for _, r := range []*Record{rec(Volume, "mine", "u2"), rec(Volume, "both", "u4")} {
		if err := own.Reserve(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*Record{rec(Volume, "theirs", "u1"), rec(Volume, "both", "u3")} {
		if err := theirs.Reserve(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	l := Layered{Own: own, CephCSI: theirs}
	lookups := []struct {
		name, uuid  string
		wantCephCSI bool
	}{
		{"mine", "u2", false},
		{"theirs", "u1", true},
		{"both", "u4", false}, // Pelagic's first
	}
	for _, tc := range lookups {
		r, err := l.LookupName(ctx, Volume, tc.name)
		if err != nil || r.UUID != tc.uuid || r.FromCephCSI() != tc.wantCephCSI {
			t.Errorf("LookupName(%s) = %+v, %v", tc.name, r, err)
		}
		if r, err := l.Lookup(ctx, Volume, tc.uuid); err != nil || r.FromCephCSI() != tc.wantCephCSI {
			t.Errorf("Lookup(%s) = %+v, %v", tc.uuid, r, err)
		}
	}
	page, err := l.List(ctx, Volume, "u1", 2)
	if err != nil || len(page) != 2 || page[0].UUID != "u2" || page[1].UUID != "u3" {
		t.Errorf("List after u1, 2 = %v, %v; want u2 (Pelagic's), u3 (ceph-csi's)", page, err)
	}
	if err := l.Reserve(ctx, rec(Volume, "new", "u5")); err != nil {
		t.Fatal(err)
	}
	if _, err := own.Lookup(ctx, Volume, "u5"); err != nil {
		t.Errorf("a new reservation is not in Pelagic's journal: %v", err)
	}
	r, _ := l.Lookup(ctx, Volume, "u1")
	if err := l.Remove(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := theirs.Lookup(ctx, Volume, "u1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ceph-csi's record survives its removal: %v", err)
	}
	if _, err := l.Lookup(ctx, Volume, "u9"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup of an unknown UUID = %v", err)
	}
}

// TestLayeredReserveOfCephCSIName: a name ceph-csi's journal holds is
// taken, so reserving first and looking up after finds ceph-csi's record.
func TestLayeredReserveOfCephCSIName(t *testing.T) {
	ctx := context.Background()
	own, theirs := NewMemory(), NewMemory()
	theirs.Origin = OriginCephCSI
	old := &Record{Kind: Volume, Name: "pvc-old", UUID: "11111111-1111-4111-8111-111111111111", Backing: "csi-vol-1"}
	if err := theirs.Reserve(ctx, old); err != nil {
		t.Fatal(err)
	}
	l := Layered{Own: own, CephCSI: theirs}
	err := l.Reserve(ctx, &Record{Kind: Volume, Name: "pvc-old", UUID: "22222222-2222-4222-8222-222222222222"})
	if !errors.Is(err, ErrNameTaken) {
		t.Fatalf("Reserve of ceph-csi's name = %v, want ErrNameTaken", err)
	}
	if rec, err := l.LookupName(ctx, Volume, "pvc-old"); err != nil || rec.UUID != old.UUID || !rec.FromCephCSI() {
		t.Fatalf("LookupName = %+v, %v; want ceph-csi's record", rec, err)
	}
	if err := l.Reserve(ctx, &Record{Kind: Volume, Name: "pvc-new", UUID: "33333333-3333-4333-8333-333333333333"}); err != nil {
		t.Fatalf("Reserve of a new name: %v", err)
	}
}
