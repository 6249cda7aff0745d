// Command e2e-scenarios runs Pelagic's Kubernetes end-to-end scenarios against
// the cluster e2e/k8s/run.sh brought up in -dir, and prints a table of results
// with a timing each. Every scenario asserts through the Kubernetes API and on
// the data itself (inside the pods, and in Ceph). It exits 1 when a scenario
// fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// scenario is one row of the table.
type scenario struct {
	id      string
	name    string
	timeout time.Duration
	run     func(ctx context.Context, e *env) error
}

// skipError marks a scenario that cannot run here, and says why.
type skipError struct{ reason string }

func (s skipError) Error() string { return s.reason }

func skip(format string, args ...any) error { return skipError{fmt.Sprintf(format, args...)} }

func scenarios() []scenario {
	return []scenario{
		{"0", "deploy/: every object passes a server-side dry run", 2 * time.Minute, deployDryRun},
		{"1", "StatefulSet web: 3 replicas on rook-ceph-block, pod deleted, scaled 1 and back", 10 * time.Minute, statefulSet},
		{"3a", "expansion seen in the pod: xfs, online", 5 * time.Minute, expandXFS},
		{"3b", "expansion seen in the pod: ext4, online", 5 * time.Minute, expandExt4},
		{"4", "VolumeSnapshot, restore, data equal; clone of a PVC", 8 * time.Minute, snapshotRestoreClone},
		{"5", "reclaimPolicy Delete removes the image; Retain keeps it, PV Released", 5 * time.Minute, reclaim},
		{"6", "CephFS RWX: two pods share one PVC", 5 * time.Minute, cephFSShared},
		{"7a", "generic ephemeral volume", 5 * time.Minute, ephemeralVolume},
		{"7b", "raw block PVC read and written by a pod", 5 * time.Minute, rawBlock},
		{"2", "RWO volume moves to a second node; the holder is named, then fenced", 15 * time.Minute, moveToSecondNode},
	}
}

type result struct {
	s       scenario
	status  string // PASS, FAIL, SKIP
	elapsed time.Duration
	note    string
}

func main() {
	dir := flag.String("dir", "", "the e2e directory run.sh made")
	root := flag.String("root", ".", "the repository")
	only := flag.String("only", "", "comma-separated scenario numbers (default: all)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "e2e-scenarios: -dir is required")
		os.Exit(2)
	}
	e, err := newEnv(*dir, *root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e-scenarios:", err)
		os.Exit(1)
	}
	defer e.close()

	var results []result
	for _, s := range scenarios() {
		if !selected(*only, s.id) {
			continue
		}
		results = append(results, runOne(e, s))
	}
	failed := printTable(os.Stdout, results)
	if failed > 0 {
		os.Exit(1)
	}
}

// selected: "1,3" selects 1, 3a and 3b.
func selected(only, id string) bool {
	if only == "" {
		return true
	}
	return slices.ContainsFunc(strings.Split(only, ","), func(o string) bool {
		o = strings.TrimSpace(o)
		return o == id || strings.TrimRight(id, "abc") == o
	})
}

func runOne(e *env, s scenario) result {
	e.logf("=== %s: %s", s.id, s.name)
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	e.scenario = s.id
	start := time.Now()
	err := s.run(ctx, e)
	r := result{s: s, elapsed: time.Since(start)}
	var sk skipError
	var pn passWithNote
	switch {
	case err == nil:
		r.status = "PASS"
	case errors.As(err, &pn):
		r.status, r.note = "PASS", pn.note
	case errors.As(err, &sk):
		r.status, r.note = "SKIP", sk.reason
	default:
		r.status, r.note = "FAIL", err.Error()
		r.note += " (diagnostics: " + e.diagnose(s.id) + ")"
	}
	e.logf("=== %s: %s in %.1fs %s", s.id, r.status, r.elapsed.Seconds(), r.note)
	return r
}

func printTable(w *os.File, results []result) (failed int) {
	fmt.Fprintf(w, "\n%-4s %-80s %-6s %8s\n", "#", "scenario", "result", "time")
	fmt.Fprintln(w, strings.Repeat("-", 101))
	for _, r := range results {
		fmt.Fprintf(w, "%-4s %-80s %-6s %7.1fs\n", r.s.id, r.s.name, r.status, r.elapsed.Seconds())
		if r.note != "" {
			fmt.Fprintf(w, "     %s\n", wrap(r.note, 90, "     "))
		}
		if r.status == "FAIL" {
			failed++
		}
	}
	fmt.Fprintln(w, strings.Repeat("-", 101))
	fmt.Fprintf(w, "%d scenarios: %d failed\n", len(results), failed)
	return failed
}

func wrap(s string, width int, indent string) string {
	var lines []string
	for len(s) > width {
		cut := strings.LastIndex(s[:width], " ")
		if cut <= 0 {
			cut = width
		}
		lines = append(lines, s[:cut])
		s = strings.TrimLeft(s[cut:], " ")
	}
	return strings.Join(append(lines, s), "\n"+indent)
}

// examples is the path of a file in deploy/examples.
func (e *env) example(name string) string { return filepath.Join(e.root, "deploy", "examples", name) }
