package journal

import (
	"errors"
	"testing"
)

func TestParseCephCSIDirectoryValue(t *testing.T) {
	const uuid = "11111111-1111-4111-8111-111111111111"
	tests := []struct {
		value    string
		want     string
		wantErr  error
		wantFail bool
	}{
		{value: uuid, want: uuid},                                  // what the measured release writes
		{value: "0000000000000002/" + uuid, want: uuid},            // the two-part form, naming this pool
		{value: "0000000000000009/" + uuid, wantErr: ErrOtherPool}, // an entry of another pool
		{value: "2/" + uuid, wantFail: true},
		{value: "zzzzzzzzzzzzzzzz/" + uuid, wantFail: true},
	}
	for _, tt := range tests {
		got, err := parseCephCSIDirectoryValue(tt.value, 2)
		switch {
		case tt.wantErr != nil || tt.wantFail:
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Errorf("%q: %q, %v; want an error %v", tt.value, got, err, tt.wantErr)
			}
		case err != nil || got != tt.want:
			t.Errorf("%q: %q, %v; want %q", tt.value, got, err, tt.want)
		}
	}
}

func TestCephCSIDirectoryObjects(t *testing.T) {
	got := CephCSIDirectoryObjects(DefaultCephCSIInstance)
	if len(got) != 2 || got[0] != "csi.volumes.default" || got[1] != "csi.snaps.default" {
		t.Errorf("%v", got)
	}
}

// TestMemoryOrigin: a Memory standing in for ceph-csi's journal marks what
// it returns, as the real reader does.
func TestMemoryOrigin(t *testing.T) {
	m := NewMemory()
	m.Origin = OriginCephCSI
	if err := m.Reserve(t.Context(), &Record{Kind: Volume, Name: "n", UUID: "u"}); err != nil {
		t.Fatal(err)
	}
	rec, err := m.LookupName(t.Context(), Volume, "n")
	if err != nil || !rec.FromCephCSI() {
		t.Fatalf("%+v, %v", rec, err)
	}
	if rec, _ := NewMemory().LookupName(t.Context(), Volume, "n"); rec != nil && rec.FromCephCSI() {
		t.Fatal("a plain Memory marks records")
	}
}
