package nodefs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
)

// StagedIndex maps the volumes staged on this node to their staging
// paths, in Dir/staged: what NodeGetVolumeHealth without paths, and a
// restarted plugin, go by. With no Dir it knows nothing and keeps nothing.
type StagedIndex struct{ Dir string }

// StagedEntry is one staged volume.
type StagedEntry struct {
	VolumeID    string `json:"volumeID"`
	StagingPath string `json:"stagingPath"`
}

func (x StagedIndex) path(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(x.Dir, "staged", hex.EncodeToString(sum[:12])+".json")
}

// Put records that volumeID is staged at staging. It comes before the
// stage record: an entry whose record is missing is dropped when found,
// and a stage record must never be missing from the index.
func (x StagedIndex) Put(volumeID, staging string) error {
	if x.Dir == "" {
		return nil
	}
	return WriteJSON(x.path(volumeID), StagedEntry{VolumeID: volumeID, StagingPath: staging})
}

// Remove forgets volumeID.
func (x StagedIndex) Remove(volumeID string) error {
	if x.Dir == "" {
		return nil
	}
	if err := os.Remove(x.path(volumeID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// StagingPath returns where volumeID is staged, "" if the index does not know.
func (x StagedIndex) StagingPath(volumeID string) string {
	if x.Dir == "" {
		return ""
	}
	var e StagedEntry
	if b, err := os.ReadFile(x.path(volumeID)); err == nil && json.Unmarshal(b, &e) == nil && e.VolumeID == volumeID {
		return e.StagingPath
	}
	return ""
}

// All returns every entry.
func (x StagedIndex) All() []StagedEntry {
	if x.Dir == "" {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(x.Dir, "staged", "*.json"))
	var out []StagedEntry
	for _, f := range files {
		var e StagedEntry
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &e) == nil {
			out = append(out, e)
		}
	}
	return out
}
