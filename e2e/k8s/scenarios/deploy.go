package main

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"
)

// deployDryRun sends every object of every manifest in deploy/ to the API
// server as a server-side dry run (validation, defaulting, admission, CRD
// schemas), and the kustomization as a whole. Examples go to a namespace of
// their own.
func deployDryRun(ctx context.Context, e *env) error {
	start := time.Now()
	const ns = "s0-dry-run"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	deploy := filepath.Join(e.root, "deploy")
	var files []string
	err := filepath.WalkDir(deploy, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".yaml") && d.Name() != "kustomization.yaml" {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		return err
	}
	objects := 0
	for _, f := range files {
		args := []string{"apply", "--dry-run=server", "-o", "name", "-f", f}
		if strings.Contains(f, string(filepath.Separator)+"examples"+string(filepath.Separator)) {
			args = append([]string{"-n", ns}, args...)
		}
		out, err := e.k(ctx, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", strings.TrimPrefix(f, e.root+"/"), err)
		}
		objects += len(strings.Fields(out))
	}
	out, err := e.k(ctx, "apply", "--dry-run=server", "-o", "name", "-k", deploy)
	if err != nil {
		return fmt.Errorf("the kustomization: %w", err)
	}
	e.step(start, "%d objects in %d files, and the kustomization's %d", objects, len(files), len(strings.Fields(out)))
	_, err = e.k(ctx, "delete", "namespace", ns, "--wait=false")
	return err
}
