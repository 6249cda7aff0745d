package nodefs

import (
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// CheckPath checks a staging or target path from the CO: absolute, no
// ".." element, and inside root when root (the kubelet directory) is set.
// Nothing is mounted on a path that fails: the error is InvalidArgument.
func CheckPath(what, path, root string) error {
	switch {
	case path == "":
		return status.Errorf(codes.InvalidArgument, "%s is missing", what)
	case !filepath.IsAbs(path):
		return status.Errorf(codes.InvalidArgument, "%s %q must be absolute", what, path)
	case strings.ContainsRune(path, 0):
		// No system call takes it: every file operation on it fails (EINVAL).
		return status.Errorf(codes.InvalidArgument, "%s %q contains a NUL byte", what, path)
	}
	for _, elem := range strings.Split(path, "/") {
		if elem == ".." {
			return status.Errorf(codes.InvalidArgument, "%s %q must not contain '..'", what, path)
		}
	}
	if root != "" {
		rel, err := filepath.Rel(filepath.Clean(root), filepath.Clean(path))
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			return status.Errorf(codes.InvalidArgument, "%s %q is outside the kubelet directory %q", what, path, root)
		}
	}
	return nil
}
