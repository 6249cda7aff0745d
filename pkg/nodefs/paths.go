package nodefs

import (
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Linux's limits on a file name and on a path (NUL included). A path that
// passes CheckPath leaves room for its stage record beside it (RecordPath).
const (
	nameMax = 255
	pathMax = 4096
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
	case len(path)+len(recordSuffix) >= pathMax:
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long; at most %d", what, len(path), pathMax-1-len(recordSuffix))
	}
	for _, elem := range strings.Split(path, "/") {
		if elem == ".." {
			return status.Errorf(codes.InvalidArgument, "%s %q must not contain '..'", what, path)
		}
		if len(elem)+len(recordSuffix) > nameMax {
			return status.Errorf(codes.InvalidArgument, "%s has a %d-byte element; at most %d", what, len(elem), nameMax-len(recordSuffix))
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
