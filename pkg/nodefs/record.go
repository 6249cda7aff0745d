package nodefs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// WriteJSON writes v as JSON to path through a temporary file and a
// rename, so that a reader finds the old content or the new, never part of
// one. The file is 0600; missing directories are made 0700.
func WriteJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RecordPath is where the stage record of a staging path lives: beside
// it, so it outlives the mount and a restart of the plugin.
func RecordPath(stagingPath string) string {
	return filepath.Clean(stagingPath) + recordSuffix
}

const recordSuffix = ".pelagic.json"

// ReadRecord reads the stage record of stagingPath into rec; an error
// matching os.ErrNotExist means nothing is staged there.
func ReadRecord(stagingPath string, rec any) error {
	b, err := os.ReadFile(RecordPath(stagingPath))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, rec); err != nil {
		return fmt.Errorf("corrupt stage record %s: %w", RecordPath(stagingPath), err)
	}
	return nil
}

// WriteRecord replaces the stage record of stagingPath atomically.
func WriteRecord(stagingPath string, rec any) error { return WriteJSON(RecordPath(stagingPath), rec) }

// RemoveRecord removes the stage record of stagingPath; none is success.
func RemoveRecord(stagingPath string) error {
	if err := os.Remove(RecordPath(stagingPath)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// StatBounded stats a path that may lie on a hung FUSE mount: the caller
// is released at ctx's deadline.
func StatBounded(ctx context.Context, path string) (os.FileInfo, error) {
	return util.Do(ctx, "stat "+path, func() (os.FileInfo, error) { return os.Stat(path) })
}
