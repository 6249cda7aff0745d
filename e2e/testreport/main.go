// Command testreport reads `go test -json` on stdin and prints what `go
// test` prints (a line per package, the whole output of failed tests and of
// build failures), then the counts of passed, failed and skipped tests and
// every skip with its reason. With -secret-files, it also looks for the
// keys those files hold in every line the tests printed, driver logs
// included, and counts a line that carries one as a failure. It exits 1
// when a test or a build failed, or a key was printed.
//
//	go test -json ./... | go run ./e2e/testreport [-secret-files KEYFILE,...]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
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
	secrets              []string
	leaks                []string // "pkg Test", once per line that carried a key
	linesScanned         int
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
		r.scan(e)
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

// scan counts an output line that carries a key; the line itself is not
// kept, so the key is printed nowhere.
func (r *report) scan(e event) {
	r.linesScanned++
	for _, s := range r.secrets {
		if strings.Contains(e.Output, s) {
			r.leaks = append(r.leaks, strings.TrimSpace(e.Package+" "+e.Test))
			return
		}
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
	if len(r.secrets) == 0 {
		return
	}
	fmt.Fprintf(r.out, "secrets: %d of %d output lines carry one of the %d keys the tests used\n",
		len(r.leaks), r.linesScanned, len(r.secrets))
	for _, l := range r.leaks {
		fmt.Fprintf(r.out, "  a key in the output of %s\n", l)
	}
}

func (r *report) ok() bool {
	return r.failed == 0 && r.failures == 0 && r.buildFails == 0 && len(r.leaks) == 0
}

func run(in io.Reader, out io.Writer, secrets []string) bool {
	r := newReport(out)
	r.secrets = secrets
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

// readSecrets returns the keys the files hold: a file is a bare key, or a
// keyring whose "key = " lines hold them.
func readSecrets(paths string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(paths, ",") {
		if p == "" {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if k, ok := strings.CutPrefix(line, "key = "); ok {
				line = strings.TrimSpace(k)
			}
			if len(line) >= 16 && !strings.ContainsAny(line, " []") {
				out = append(out, line)
			}
		}
	}
	return out, nil
}

func main() {
	secretFiles := flag.String("secret-files", "", "comma-separated files holding keys no output may carry")
	flag.Parse()
	secrets, err := readSecrets(*secretFiles)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	if !run(os.Stdin, os.Stdout, secrets) {
		os.Exit(1)
	}
}
