package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func rec(kind Kind, name, uuid string) *Record {
	return &Record{Kind: kind, Name: name, UUID: uuid, Backing: "csi-vol-" + uuid, SizeBytes: 1 << 30}
}

func TestMemoryReserve(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	if err := m.Reserve(ctx, rec(Volume, "pvc-1", "u1")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		r    *Record
		want error
	}{
		{"same name", rec(Volume, "pvc-1", "u2"), ErrNameTaken},
		{"same name, other kind", rec(Snapshot, "pvc-1", "u3"), nil},
		{"other name", rec(Volume, "pvc-2", "u4"), nil},
	}
	for _, tc := range tests {
		if err := m.Reserve(ctx, tc.r); !errors.Is(err, tc.want) {
			t.Errorf("%s: Reserve = %v, want %v", tc.name, err, tc.want)
		}
	}
	if got, err := m.LookupName(ctx, Volume, "pvc-1"); err != nil || got.UUID != "u1" {
		t.Errorf("LookupName = %+v, %v; want the first reservation", got, err)
	}
	if _, err := m.Lookup(ctx, Volume, "u2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("losing reservation is visible: %v", err)
	}
}

func TestMemoryRemoveAndRepair(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	r := rec(Volume, "pvc-1", "u1")
	if err := m.Reserve(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, _ := m.Lookup(ctx, Volume, "u1")
	got.Backing = "changed"
	if again, _ := m.Lookup(ctx, Volume, "u1"); again.Backing != r.Backing {
		t.Error("Lookup returned the stored record, not a copy")
	}
	for range 2 { // removing twice is fine
		if err := m.Remove(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.LookupName(ctx, Volume, "pvc-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("name survives Remove: %v", err)
	}
	if err := m.Reserve(ctx, rec(Volume, "pvc-1", "u2")); err != nil {
		t.Errorf("name not reusable after Remove: %v", err)
	}
	if err := m.Repair(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Lookup(ctx, Volume, "u1"); err != nil || got.Name != "pvc-1" {
		t.Errorf("Repair did not restore the directory entry: %v, %v", got, err)
	}
}

func TestMemoryList(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	for _, u := range []string{"c", "a", "e", "b", "d"} {
		if err := m.Reserve(ctx, rec(Volume, "pvc-"+u, u)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Reserve(ctx, rec(Snapshot, "snap-a", "aa")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kind       Kind
		startAfter string
		max        int
		want       string
	}{
		{Volume, "", 0, "a,b,c,d,e"},
		{Volume, "", 2, "a,b"},
		{Volume, "b", 2, "c,d"},
		{Volume, "d", 2, "e"},
		{Volume, "e", 2, ""},
		{Volume, "", 10, "a,b,c,d,e"},
		{Snapshot, "", 0, "aa"},
	}
	for _, tc := range tests {
		recs, err := m.List(ctx, tc.kind, tc.startAfter, tc.max)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range recs {
			ids = append(ids, r.UUID)
		}
		if got := strings.Join(ids, ","); got != tc.want {
			t.Errorf("List(%s, %q, %d) = %s, want %s", tc.kind, tc.startAfter, tc.max, got, tc.want)
		}
	}

	// Paging with the last UUID as the cursor visits every record once.
	var all []string
	for after := ""; ; {
		page, _ := m.List(ctx, Volume, after, 2)
		for _, r := range page {
			all = append(all, r.UUID)
		}
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].UUID
	}
	if fmt.Sprint(all) != "[a b c d e]" {
		t.Errorf("paged through %v", all)
	}
}
