package nodefs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func TestStageRecord(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "plugins", "globalmount")
	type record struct{ VolumeID string }
	var got record
	if err := ReadRecord(staging, &got); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadRecord before any write = %v", err)
	}
	for _, id := range []string{"v1", "v2"} {
		if err := WriteRecord(staging, record{id}); err != nil {
			t.Fatal(err)
		}
		if err := ReadRecord(staging, &got); err != nil || got.VolumeID != id {
			t.Fatalf("ReadRecord = %+v, %v; want %s", got, err, id)
		}
	}
	fi, err := os.Stat(RecordPath(staging))
	if err != nil || fi.Mode().Perm() != 0o600 || filepath.Dir(RecordPath(staging)) != filepath.Dir(staging) {
		t.Errorf("record %s: %v, %v", RecordPath(staging), fi.Mode(), err)
	}
	if _, err := os.Stat(RecordPath(staging) + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	if err := os.WriteFile(RecordPath(staging), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ReadRecord(staging, &got); err == nil || !strings.Contains(err.Error(), "corrupt stage record") {
		t.Errorf("a corrupt record reads as %v", err)
	}
	for range 2 { // a second removal is success
		if err := RemoveRecord(staging); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStagedIndex(t *testing.T) {
	x := StagedIndex{Dir: t.TempDir()}
	if err := x.Put("vol-a", "/staging/a"); err != nil {
		t.Fatal(err)
	}
	if err := x.Put("vol-b", "/staging/b"); err != nil {
		t.Fatal(err)
	}
	if got := x.StagingPath("vol-a"); got != "/staging/a" {
		t.Errorf("StagingPath(vol-a) = %q", got)
	}
	if err := x.Remove("vol-a"); err != nil {
		t.Fatal(err)
	}
	if err := x.Remove("vol-a"); err != nil {
		t.Fatal(err)
	}
	if got := x.All(); len(got) != 1 || got[0] != (StagedEntry{"vol-b", "/staging/b"}) {
		t.Errorf("All = %+v", got)
	}
	if got := x.StagingPath("vol-a"); got != "" {
		t.Errorf("removed volume staged at %q", got)
	}
	none := StagedIndex{}
	if none.Put("v", "/s") != nil || none.StagingPath("v") != "" || none.All() != nil || none.Remove("v") != nil {
		t.Error("an index without a directory keeps something")
	}
}

func TestPublicationConflict(t *testing.T) {
	mode := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability_AccessMode {
		return &csi.VolumeCapability_AccessMode{Mode: m}
	}
	fs := &csi.VolumeCapability{AccessMode: mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: []string{"noatime", "discard"}}}}
	block := &csi.VolumeCapability{AccessMode: mode(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER),
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
	if got := CapabilityKey(fs, "ext4"); got != "SINGLE_NODE_WRITER/ext4/discard,noatime" {
		t.Errorf("filesystem key %q", got)
	}
	if got := CapabilityKey(block, "ext4"); got != "MULTI_NODE_MULTI_WRITER/block" {
		t.Errorf("block key %q", got)
	}
	p := Publication{Path: "/t", Capability: CapabilityKey(fs, "ext4")}
	tests := []struct {
		name     string
		p        Publication
		key      string
		readOnly bool
		conflict bool
	}{
		{"same", p, CapabilityKey(fs, "ext4"), false, false},
		{"read-only now", p, CapabilityKey(fs, "ext4"), true, true},
		{"other filesystem", p, CapabilityKey(fs, "xfs"), false, true},
		{"block now", p, CapabilityKey(block, "ext4"), false, true},
		{"older record", Publication{Path: "/t"}, CapabilityKey(block, "ext4"), true, false},
	}
	for _, tc := range tests {
		if why := tc.p.Conflict(tc.key, tc.readOnly); (why != "") != tc.conflict {
			t.Errorf("%s: Conflict = %q", tc.name, why)
		}
	}
}
