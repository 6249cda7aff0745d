// Command testreport reads `go test -json` on stdin and prints what `go
// test` prints (a line per package, the whole output of failed tests and of
// build failures), then the counts of passed, failed and skipped tests and
// every skip with its reason. It exits 1 when a test or a build failed.
//
//	go test -json ./... | go run ./e2e/testreport
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of test2json's output.
type event struct {
	Action     string
	Package    string
	Test       string
	Elapsed    float64
	Output     string
	ImportPath string
}

type key struct{ pkg, test string }

// report accumulates the stream.
type report struct {
	out                  io.Writer
	output               map[key][]string // a test's output, kept until it ends
	passed, failed       int
	skipped              []string // "pkg Test: reason"
	failures, buildFails int
}

func newReport(out io.Writer) *report {
	return &report{out: out, output: map[key][]string{}}
}

func (r *report) add(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		r.output[key{e.ImportPath, ""}] = append(r.output[key{e.ImportPath, ""}], e.Output)
	case "build-fail":
		r.buildFails++
		fmt.Fprint(r.out, strings.Join(r.output[key{e.ImportPath, ""}], ""))
	case "output":
		r.output[k] = append(r.output[k], e.Output)
	case "pass", "fail", "skip":
		r.end(e, k)
	}
}

// end closes a test or a package.
func (r *report) end(e event, k key) {
	lines := r.output[k]
	delete(r.output, k)
	if e.Test == "" { // the package: its summary line, or everything on failure
		if e.Action == "fail" {
			r.failures++
			r.flushUnfinished(e.Package) // a panic or a timeout ends no test
			fmt.Fprint(r.out, strings.Join(lines, ""))
			return
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "? ") || strings.HasPrefix(l, "ok\t") || strings.HasPrefix(l, "?\t") {
				fmt.Fprint(r.out, l)
			}
		}
		return
	}
	switch e.Action {
	case "pass":
		r.passed++
	case "fail":
		r.failed++
		fmt.Fprint(r.out, strings.Join(lines, ""))
	case "skip":
		r.skipped = append(r.skipped, fmt.Sprintf("%s %s: %s", e.Package, e.Test, skipReason(lines)))
	}
}

// flushUnfinished prints the output of the package's tests that never ended.
func (r *report) flushUnfinished(pkg string) {
	var names []string
	for k := range r.output {
		if k.pkg == pkg && k.test != "" {
			names = append(names, k.test)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprint(r.out, strings.Join(r.output[key{pkg, n}], ""))
		delete(r.output, key{pkg, n})
	}
}

// skipReason is what the test logged, without the run and skip headers.
func skipReason(lines []string) string {
	var why []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		why = append(why, t)
	}
	return strings.Join(why, " ")
}

func (r *report) summary() {
	fmt.Fprintf(r.out, "\ntests: %d passed, %d failed, %d skipped (tests and subtests)\n", r.passed, r.failed, len(r.skipped))
	sort.Strings(r.skipped)
	for _, s := range r.skipped {
		fmt.Fprintf(r.out, "  skipped: %s\n", s)
	}
}

func (r *report) ok() bool { return r.failed == 0 && r.failures == 0 && r.buildFails == 0 }

func run(in io.Reader, out io.Writer) bool {
	r := newReport(out)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Fprintln(out, sc.Text()) // not test2json: go's own messages
			continue
		}
		r.add(e)
	}
	r.summary()
	return r.ok()
}

func main() {
	if !run(os.Stdin, os.Stdout) {
		os.Exit(1)
	}
}
