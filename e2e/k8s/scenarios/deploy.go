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
// their own. deploy/monitoring/servicemonitor.yaml is checked only where the
// Prometheus Operator's CRD is installed, which this cluster does not have.
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
	var unchecked []string
	_, crdErr := e.k(ctx, "get", "crd", "servicemonitors.monitoring.coreos.com")
	for _, f := range files {
		if filepath.Base(f) == "servicemonitor.yaml" && crdErr != nil {
			unchecked = append(unchecked, strings.TrimPrefix(f, e.root+"/")+" (no ServiceMonitor CRD here)")
			continue
		}
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
	e.step(start, "%d objects in %d files, and the kustomization's %d", objects, len(files)-len(unchecked), len(strings.Fields(out)))
	if len(unchecked) > 0 {
		e.step(start, "not checked: %s", strings.Join(unchecked, ", "))
	}
	_, err = e.k(ctx, "delete", "namespace", ns, "--wait=false")
	return err
}
