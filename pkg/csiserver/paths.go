package csiserver

import (
	"fmt"
	"path/filepath"
	"strings"
)

// ValidatePath checks a staging or target path from the CO: absolute, no
// ".." element, and inside root when root is set. Nothing is mounted on a
// path that fails.
func ValidatePath(what, path, root string) error {
	switch {
	case path == "":
		return fmt.Errorf("%s is missing", what)
	case !filepath.IsAbs(path):
		return fmt.Errorf("%s %q must be absolute", what, path)
	}
	for _, elem := range strings.Split(path, "/") {
		if elem == ".." {
			return fmt.Errorf("%s %q must not contain '..'", what, path)
		}
	}
	if root != "" {
		rel, err := filepath.Rel(filepath.Clean(root), filepath.Clean(path))
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			return fmt.Errorf("%s %q is outside the kubelet directory %q", what, path, root)
		}
	}
	return nil
}
