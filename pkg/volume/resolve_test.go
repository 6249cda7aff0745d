package volume

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

func TestResolve(t *testing.T) {
	ctx := context.Background()
	j := journal.NewMemory()
	rec := &journal.Record{Kind: journal.Volume, Name: "pvc-1", UUID: NewUUID(), Backing: "csi-vol-x"}
	if err := j.Reserve(ctx, rec); err != nil {
		t.Fatal(err)
	}
	id := volumeid.ID{ClusterID: "c1", PoolID: 7, UUID: rec.UUID}.String()
	other := volumeid.ID{ClusterID: "c1", PoolID: 7, UUID: NewUUID()}.String()
	found := func(context.Context, volumeid.ID) (*journal.Memory, error) { return j, nil }
	failing := func(err error) func(context.Context, volumeid.ID) (*journal.Memory, error) {
		return func(context.Context, volumeid.ID) (*journal.Memory, error) { return nil, err }
	}
	tests := []struct {
		name string
		id   string
		open func(context.Context, volumeid.ID) (*journal.Memory, error)
		want codes.Code
	}{
		{"found", id, found, codes.OK},
		{"malformed ID", "pvc-1", found, codes.NotFound},
		{"no record", other, found, codes.NotFound},
		{"unknown cluster", id, failing(fmt.Errorf("%w %q", ceph.ErrUnknownCluster, "c1")), codes.NotFound},
		{"pool gone", id, failing(fmt.Errorf("%w: ID 7", ceph.ErrPoolNotFound)), codes.NotFound},
		{"no credentials yet", id, failing(status.Error(codes.FailedPrecondition, "no credentials")), codes.FailedPrecondition},
		{"cluster down", id, failing(context.DeadlineExceeded), codes.DeadlineExceeded},
	}
	for _, tc := range tests {
		vid, _, got, err := Resolve(ctx, journal.Volume, tc.id, tc.open)
		if status.Code(err) != tc.want {
			t.Errorf("%s: Resolve = %v, want %v", tc.name, err, tc.want)
			continue
		}
		if tc.want == codes.OK && (got.Backing != "csi-vol-x" || vid.PoolID != 7) {
			t.Errorf("%s: resolved %+v in %+v", tc.name, got, vid)
		}
	}
}

func TestReserve(t *testing.T) {
	ctx := context.Background()
	j := journal.NewMemory()
	params := map[string]string{"pool": "rbd"}
	req := Request{Name: "pvc-1", Params: params, Size: 2 * gib, BackingPrefix: "csi-vol-"}
	first, reserved, err := Reserve(ctx, j, req)
	if err != nil || !reserved || first.Backing != "csi-vol-"+first.UUID || first.SizeBytes != 2*gib {
		t.Fatalf("first Reserve = %+v, %v, %v", first, reserved, err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(first.UUID) {
		t.Errorf("UUID %q is not a version 4 UUID", first.UUID)
	}
	tests := []struct {
		name string
		req  Request
		want codes.Code
	}{
		{"the same request", req, codes.OK},
		{"smaller", Request{Name: "pvc-1", Params: params, Size: gib}, codes.OK},
		{"larger", Request{Name: "pvc-1", Params: params, Size: 3 * gib}, codes.AlreadyExists},
		{"limit below it", Request{Name: "pvc-1", Params: params, Size: gib, Limit: gib}, codes.AlreadyExists},
		{"other parameters", Request{Name: "pvc-1", Params: map[string]string{"pool": "ssd"}, Size: gib}, codes.AlreadyExists},
		{"other source", Request{Name: "pvc-1", Params: params, Source: "volume:x", Size: gib}, codes.AlreadyExists},
	}
	for _, tc := range tests {
		rec, reserved, err := Reserve(ctx, j, tc.req)
		if status.Code(err) != tc.want || reserved {
			t.Errorf("%s: Reserve = %v, %v; want %v, not reserved", tc.name, reserved, err, tc.want)
		}
		if tc.want == codes.OK && rec.UUID != first.UUID {
			t.Errorf("%s: another reservation %s", tc.name, rec.UUID)
		}
	}
	if _, _, err := Reserve(ctx, j, tests[2].req); !strings.Contains(err.Error(), `"pvc-1"`) {
		t.Errorf("refusal %v does not name the volume", err)
	}
}

// A reservation whose directory entry a crash lost is repaired when its
// name is asked for again, so its ID resolves.
func TestReserveRepairsTheDirectory(t *testing.T) {
	ctx := context.Background()
	j := &lossyJournal{Memory: journal.NewMemory()}
	req := Request{Name: "pvc-1", Size: gib, BackingPrefix: "csi-vol-"}
	rec, _, err := Reserve(ctx, j, req)
	if err != nil {
		t.Fatal(err)
	}
	j.lost = rec.UUID
	if _, _, err := Reserve(ctx, j, req); err != nil || j.repaired != rec.UUID {
		t.Errorf("Reserve again = %v; repaired %q, want %q", err, j.repaired, rec.UUID)
	}
}

type lossyJournal struct {
	*journal.Memory
	lost, repaired string
}

func (j *lossyJournal) Lookup(ctx context.Context, kind journal.Kind, uuid string) (*journal.Record, error) {
	if uuid == j.lost {
		return nil, journal.ErrNotFound
	}
	return j.Memory.Lookup(ctx, kind, uuid)
}

func (j *lossyJournal) Repair(ctx context.Context, rec *journal.Record) error {
	j.repaired, j.lost = rec.UUID, ""
	return j.Memory.Repair(ctx, rec)
}

// A name found taken and then gone (another request gave its reservation
// up in between) is Aborted, for the caller to retry.
func TestReserveNameTakenThenGone(t *testing.T) {
	ctx := context.Background()
	j := &vanishingJournal{Memory: journal.NewMemory()}
	req := Request{Name: "pvc-1", Size: gib, BackingPrefix: "csi-vol-"}
	if _, _, err := Reserve(ctx, j, req); err != nil {
		t.Fatal(err)
	}
	j.vanish = true
	if _, _, err := Reserve(ctx, j, req); status.Code(err) != codes.Aborted {
		t.Errorf("Reserve of a name given up meanwhile = %v, want Aborted", err)
	}
}

type vanishingJournal struct {
	*journal.Memory
	vanish bool
}

func (j *vanishingJournal) LookupName(ctx context.Context, kind journal.Kind, name string) (*journal.Record, error) {
	if j.vanish {
		return nil, journal.ErrNotFound
	}
	return j.Memory.LookupName(ctx, kind, name)
}
