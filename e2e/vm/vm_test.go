package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/e2e/cephcsi"
	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

// EnvGuestRun, when set, is the -test.run pattern of the guest suite.
const EnvGuestRun = "PELAGIC_GUEST_RUN"

// suitePackage holds the tests that run inside the guest.
const suitePackage = "github.com/pelagic-csi/pelagic/e2e/kernel"

// TestGuest boots one guest and, in order: checks what the harness promises
// (exit status, output, environment, the guest's own kernel), runs the
// kernel client suite (e2e/kernel, built here) against a cluster on the
// guest's bridge, lets a hung command get the guest killed at its
// deadline, and checks that Close leaves nothing behind.
func TestGuest(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := InstallPackages(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := New(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	bootCtx, stopBoot := context.WithCancel(ctx)
	booted := make(chan error, 1)
	t.Cleanup(func() {
		stopBoot()
		<-booted
		if !closed {
			_ = v.Close()
		}
	})

	// The boot, the build of the suite and the cluster are independent.
	go func() { booted <- v.Boot(bootCtx) }()
	suite := filepath.Join(v.WorkDir(), "kernel.test")
	built := make(chan error, 1)
	go func() { built <- buildSuite(ctx, suite) }()
	cluster := cephtest.Start(t, "CEPH_BIND_ADDR="+v.HostAddr())
	if err := copyFile(filepath.Join(cluster.Dir, "cluster.json"), filepath.Join(v.WorkDir(), "cluster.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	err = <-booted
	booted <- err // for the cleanup
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest, cluster and suite ready after %v", time.Since(start).Round(100*time.Millisecond))

	t.Run("RunsCommands", func(t *testing.T) { testRunsCommands(ctx, t, v) })
	suiteStart := time.Now()
	t.Run("KernelClients", func(t *testing.T) {
		args := []string{suite, "-test.v", "-test.timeout=15m", "-test.parallel=4"}
		if run := os.Getenv(EnvGuestRun); run != "" {
			args = append(args, "-test.run", run)
		}
		results := &suiteLog{t: t}
		env := []string{"PELAGIC_GUEST_CLUSTER=" + v.WorkDir()}
		if bin := os.Getenv(cephcsi.EnvBinary); bin != "" { // ceph-csi's node plugin, for the swap test
			env = append(env, cephcsi.EnvBinary+"="+shareWithGuest(t, v, bin))
		}
		code, err := v.Run(ctx, results, env, args...)
		results.Flush()
		t.Logf("guest suite: %s in %v", results.summary(), time.Since(suiteStart).Round(100*time.Millisecond))
		if err != nil || code != 0 {
			t.Fatalf("the guest suite exited %d, %v; failed: %s\n%s", code, err, results.failures(), v.ConsoleTail(8192))
		}
	})
	t.Run("HungGuestIsKilled", func(t *testing.T) { testHungGuestIsKilled(ctx, t, v) })

	closed = true
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, v)
	t.Logf("wall time: %v", time.Since(start).Round(100*time.Millisecond))
}

// buildSuite compiles the guest suite on the host, into out.
func buildSuite(ctx context.Context, out string) error {
	// go-ceph builds only with the tag of the Ceph release (Pacific here).
	cmd := exec.CommandContext(ctx, "go", "test", "-c", "-tags", "pacific", "-o", out, suitePackage)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w: %s", suitePackage, err, b)
	}
	return nil
}

func testRunsCommands(ctx context.Context, t *testing.T, v *VM) {
	k, err := installedKernel()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code, err := v.Run(ctx, &out, []string{"GREETING=it's the guest"},
		"sh", "-c", `echo "$GREETING"; uname -r; echo to stderr >&2; exit 3`)
	if err != nil || code != 3 {
		t.Fatalf("Run = %d, %v; want exit status 3", code, err)
	}
	want := "it's the guest\n" + k.version + "\nto stderr\n"
	if out.String() != want {
		t.Fatalf("output %q, want %q (the guest's own kernel)", out.String(), want)
	}
	if code, err := v.Run(ctx, io.Discard, nil, "ls", "/sys/module/rbd", "/sys/module/nbd"); err != nil || code != 0 {
		t.Fatalf("the rbd and nbd modules are not loaded in the guest: %d, %v", code, err)
	}
}

func testHungGuestIsKilled(ctx context.Context, t *testing.T, v *VM) {
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err := v.Run(short, io.Discard, nil, "sleep", "600")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a command past its deadline: %v", err)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("Run returned %v after its deadline", took-3*time.Second)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", v.qemu.Process.Pid)); !os.IsNotExist(err) {
		t.Fatalf("QEMU (pid %d) is still there: %v", v.qemu.Process.Pid, err)
	}
	if _, err := v.Run(ctx, io.Discard, nil, "true"); err == nil {
		t.Fatal("a killed guest still runs commands")
	}
}

// checkNothingLeft fails if QEMU, the TAP, the bridge or the work
// directory of v survived Close.
func checkNothingLeft(t *testing.T, v *VM) {
	t.Helper()
	for _, link := range []string{v.tap, v.bridge} {
		if _, err := os.Stat("/sys/class/net/" + link); !os.IsNotExist(err) {
			t.Errorf("interface %s is still there", link)
		}
	}
	if _, err := os.Stat(v.work); !os.IsNotExist(err) {
		t.Errorf("work directory %s is still there", v.work)
	}
	if v.qemu != nil {
		if err := v.qemu.Process.Signal(syscall.Signal(0)); err == nil {
			t.Errorf("QEMU (pid %d) still runs", v.qemu.Process.Pid)
		}
	}
}

// TestWatchdogCleansUpAfterACrash: a test binary that dies without Close
// leaves no bridge and no work directory behind.
func TestWatchdogCleansUpAfterACrash(t *testing.T) {
	if os.Getenv("PELAGIC_VM_CRASH") == "1" {
		v, err := New(context.Background(), Options{})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("LEFT", v.bridge, v.work)
		os.Exit(0) // no Close: the watchdog must clean up
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestWatchdogCleansUpAfterACrash$")
	cmd.Env = append(os.Environ(), "PELAGIC_VM_CRASH=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the crashing child: %v: %s", err, out)
	}
	var bridge, work string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "LEFT" {
			bridge, work = f[1], f[2]
		}
	}
	if bridge == "" {
		t.Fatalf("the child said %q", out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, errBridge := os.Stat("/sys/class/net/" + bridge)
		_, errWork := os.Stat(work)
		if os.IsNotExist(errBridge) && os.IsNotExist(errWork) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("15 s after the crash: bridge %s (%v) and work directory %s (%v) are still there",
				bridge, errBridge, work, errWork)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// suiteLog logs the guest suite's output line by line and counts its
// results from the lines `go test -v` prints.
type suiteLog struct {
	t       *testing.T
	mu      sync.Mutex
	partial []byte
	counts  map[string]int // PASS, FAIL, SKIP
	skips   []string       // name: reason
	failed  []string
	lastSkp string
}

var resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)

func (l *suiteLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
}

// Flush logs what is left of an unterminated last line.
func (l *suiteLog) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.line(string(l.partial))
		l.partial = nil
	}
}

func (l *suiteLog) line(s string) {
	l.t.Log(s)
	if l.counts == nil {
		l.counts = map[string]int{}
	}
	if m := resultLine.FindStringSubmatch(s); m != nil {
		l.counts[m[1]]++
		l.lastSkp = ""
		if m[1] == "FAIL" {
			l.failed = append(l.failed, m[2])
		}
		if m[1] == "SKIP" {
			l.lastSkp = m[2]
		}
		return
	}
	if l.lastSkp != "" {
		l.skips = append(l.skips, l.lastSkp+": "+strings.TrimSpace(s))
		l.lastSkp = ""
	}
}

func (l *suiteLog) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf("%d passed, %d failed, %d skipped (tests and subtests)", l.counts["PASS"], l.counts["FAIL"], l.counts["SKIP"])
	if len(l.skips) > 0 {
		s += "; skipped: " + strings.Join(l.skips, "; ")
	}
	return s
}

// failures names the tests that failed, or says that none did.
func (l *suiteLog) failures() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failed) == 0 {
		return "no test"
	}
	return strings.Join(l.failed, ", ")
}

// shareWithGuest copies the file at path, or the cephcsi and cephcsi.gz a
// directory at path holds, into the work directory, the one host directory
// the guest sees at the same path wherever it is (the guest's /tmp, say, is
// its own), and returns the copy's path.
func shareWithGuest(t *testing.T, v *VM, path string) string {
	t.Helper()
	dir := filepath.Join(v.WorkDir(), "shared-"+filepath.Base(path))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() {
		to := filepath.Join(dir, filepath.Base(path))
		if err := copyFile(path, to, 0o755); err != nil {
			t.Fatal(err)
		}
		return to
	}
	for _, name := range []string{"cephcsi", "cephcsi.gz"} {
		if _, err := os.Stat(filepath.Join(path, name)); err == nil {
			if err := copyFile(filepath.Join(path, name), filepath.Join(dir, name), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}
