package journal

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// A volume and a snapshot record exactly as RBD volumes' journals hold
// them since the first release: they must decode into the same entries,
// and a record written now must read the same, so existing volumes keep
// resolving.
const (
	storedVolume = `{"kind":"volume","name":"pvc-0a0a","uuid":"11111111-1111-4111-8111-111111111111",` +
		`"image":"csi-vol-11111111-1111-4111-8111-111111111111","size":1073741824,` +
		`"params":{"clusterID":"rook-ceph","pool":"replicapool"},"source":"snapshot:0001-0009-rook-ceph-0000000000000002-2222",` +
		`"created":"2025-01-02T03:04:05.123456789Z"}`
	storedSnapshot = `{"kind":"snapshot","name":"snapshot-0b0b","uuid":"22222222-2222-4222-8222-222222222222",` +
		`"image":"csi-vol-11111111-1111-4111-8111-111111111111","imageID":"1a2b3c4d5e6f","size":1073741824,` +
		`"source":"0001-0009-rook-ceph-0000000000000002-11111111-1111-4111-8111-111111111111",` +
		`"snap":"csi-snap-22222222-2222-4222-8222-222222222222","created":"2025-01-02T03:04:05Z"}`
)

func TestStoredRecordsStillDecode(t *testing.T) {
	created := time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC)
	tests := []struct {
		stored string
		want   Record
	}{
		{storedVolume, Record{Kind: Volume, Name: "pvc-0a0a", UUID: "11111111-1111-4111-8111-111111111111",
			Backing: "csi-vol-11111111-1111-4111-8111-111111111111", SizeBytes: 1 << 30,
			Params: map[string]string{"clusterID": "rook-ceph", "pool": "replicapool"},
			Source: "snapshot:0001-0009-rook-ceph-0000000000000002-2222", Created: created}},
		{storedSnapshot, Record{Kind: Snapshot, Name: "snapshot-0b0b", UUID: "22222222-2222-4222-8222-222222222222",
			Backing: "csi-vol-11111111-1111-4111-8111-111111111111", BackingID: "1a2b3c4d5e6f", SizeBytes: 1 << 30,
			Source:   "0001-0009-rook-ceph-0000000000000002-11111111-1111-4111-8111-111111111111",
			SnapName: "csi-snap-22222222-2222-4222-8222-222222222222", Created: created.Truncate(time.Second)}},
	}
	for _, tc := range tests {
		got, err := decode([]byte(tc.stored))
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", tc.want) {
			t.Errorf("decoded %+v\nwant    %+v", *got, tc.want)
		}
		if b, err := encode(&tc.want); err != nil || string(b) != tc.stored {
			t.Errorf("encoded %s, %v\nwant    %s", b, err, tc.stored)
		}
	}
}

// The RBD journal's objects keep their names: "pelagic" is its prefix.
func TestObjectNames(t *testing.T) {
	if got := nameObject("pelagic", Volume, "pvc-1"); got != "pelagic.volume.name.pvc-1" {
		t.Errorf("name object %q", got)
	}
	if got := nameObject("pelagic", Snapshot, "snap-1"); got != "pelagic.snapshot.name.snap-1" {
		t.Errorf("name object %q", got)
	}
	if got := DirectoryObjects("pelagic"); !slices.Equal(got, []string{"pelagic.volumes", "pelagic.snapshots"}) {
		t.Errorf("directories %q", got)
	}
}

func TestForEach(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	var want []string
	for i := range 7 {
		uuid := fmt.Sprintf("u%02d", i)
		want = append(want, uuid)
		if err := m.Reserve(ctx, rec(Volume, "pvc-"+uuid, uuid)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Reserve(ctx, rec(Snapshot, "snap", "s1")); err != nil {
		t.Fatal(err)
	}
	for _, pageSize := range []int{1, 3, 7, 100} {
		var got []string
		err := ForEach(ctx, m, Volume, pageSize, func(r *Record) { got = append(got, r.UUID) })
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("page size %d: %v, %v; want %v", pageSize, got, err, want)
		}
	}
}
