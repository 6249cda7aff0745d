// Package cephtest gives tests a real one-node Ceph Pacific cluster (1 mon, 1 mgr,
// 1 memstore OSD, 1 MDS, RBD pool "rbd", CephFS "cephfs", restricted users csi-rbd
// and csi-cephfs), brought up by e2e/ceph/up.sh and torn down by e2e/ceph/down.sh.
//
// Typical use:
//
//	func TestMain(m *testing.M) { os.Exit(cephtest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		c := cephtest.Get(t) // shared by the whole test binary
//		...
//	}
//
// Set PELAGIC_TEST_CLUSTER=DIR to reuse (or create once and keep) a cluster in DIR
// across test runs: Get then never tears it down (stop it with e2e/ceph/down.sh DIR).
package cephtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvReuse names the environment variable holding the directory of a cluster to reuse.
const EnvReuse = "PELAGIC_TEST_CLUSTER"

// ScriptTimeout bounds one run of up.sh or down.sh (the first run may apt-get install).
var ScriptTimeout = 5 * time.Minute

// Cluster describes a running cluster, as written by up.sh to DIR/cluster.json.
type Cluster struct {
	Dir        string         `json:"dir"`
	Conf       string         `json:"conf"`
	FSID       string         `json:"fsid"`
	Monitors   string         `json:"monitors"` // "v1:IP:PORT": for mon_host, -m, ceph-csi config.json
	AdminID    string         `json:"adminID"`  // "admin" (no "client." prefix)
	AdminKey   string         `json:"adminKey"`
	RBDUserID  string         `json:"rbdUserID"` // "csi-rbd"
	RBDUserKey string         `json:"rbdUserKey"`
	FSUserID   string         `json:"fsUserID"` // "csi-cephfs"
	FSUserKey  string         `json:"fsUserKey"`
	Pool       string         `json:"pool"`   // "rbd"
	FSName     string         `json:"fsName"` // "cephfs"
	PIDs       map[string]int `json:"pids"`   // "mon", "mgr", "osd", "mds"

	// Keyrings and KeyFiles map "admin", "rbd", "fs" to a keyring file and to a file
	// holding only the bare key (for --keyfile), both inside Dir.
	Keyrings map[string]string `json:"keyrings"`
	KeyFiles map[string]string `json:"keyfiles"`
}

var shared struct {
	once  sync.Once
	mu    sync.Mutex
	c     *Cluster
	err   error
	out   string
	owned string // dir of a cluster this binary started and must stop
}

// Main runs the tests, then tears down the shared cluster if this test binary started
// it. It returns the exit code for os.Exit.
func Main(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	dir := shared.owned
	shared.owned = ""
	shared.mu.Unlock()
	if dir != "" {
		if out, err := runScript("down.sh", dir, nil); err != nil {
			fmt.Fprintf(os.Stderr, "cephtest: down.sh %s: %v\n%s", dir, err, out)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Get returns the cluster shared by this test binary, starting it on first use, or
// the one in $PELAGIC_TEST_CLUSTER (started there if not running, never torn down).
// It fails the test, with up.sh's output, when the cluster cannot be started.
func Get(t testing.TB) *Cluster {
	t.Helper()
	shared.once.Do(func() {
		if dir := os.Getenv(EnvReuse); dir != "" {
			shared.c, shared.out, shared.err = up(dir, nil)
			return
		}
		dir, err := os.MkdirTemp("", "pelagic-ceph-")
		if err != nil {
			shared.err = err
			return
		}
		shared.mu.Lock()
		shared.owned = dir
		shared.mu.Unlock()
		shared.c, shared.out, shared.err = up(dir, ownerEnv())
	})
	if shared.err != nil {
		t.Fatalf("cephtest: cannot start the shared Ceph cluster: %v\n%s", shared.err, shared.out)
	}
	return shared.c
}

// Start starts a fresh private cluster in a new temporary directory, with extra
// environment for up.sh (e.g. "CEPH_BIND_ADDR=10.0.0.1"), and stops it when the test
// ends. It fails the test, with up.sh's output, when the cluster cannot be started.
func Start(t testing.TB, env ...string) *Cluster {
	t.Helper()
	// Not t.TempDir(): admin sockets live in DIR/run and unix socket paths are short.
	dir, err := os.MkdirTemp("", "pelagic-ceph-")
	if err != nil {
		t.Fatalf("cephtest: %v", err)
	}
	t.Cleanup(func() {
		if out, err := runScript("down.sh", dir, nil); err != nil {
			t.Errorf("cephtest: down.sh %s: %v\n%s", dir, err, out)
		}
	})
	c, out, err := up(dir, append(ownerEnv(), env...))
	if err != nil {
		t.Fatalf("cephtest: cannot start a Ceph cluster in %s: %v\n%s", dir, err, out)
	}
	return c
}

// Load reads DIR/cluster.json as written by up.sh.
func Load(dir string) (*Cluster, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		return nil, err
	}
	var c Cluster
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s/cluster.json: %w", dir, err)
	}
	if c.Conf == "" || c.Monitors == "" || c.AdminKey == "" || c.PIDs["mon"] == 0 {
		return nil, fmt.Errorf("%s/cluster.json: incomplete", dir)
	}
	return &c, nil
}

// FreezeMon stops the monitor process (SIGSTOP), so that calls to the cluster hang
// until ThawMon: for tests that prove their calls time out instead of hanging.
func (c *Cluster) FreezeMon() error { return c.signal("mon", syscall.SIGSTOP) }

// ThawMon resumes a monitor stopped by FreezeMon (SIGCONT).
func (c *Cluster) ThawMon() error { return c.signal("mon", syscall.SIGCONT) }

// StopMon stops the monitor with sig (SIGTERM, or SIGKILL as a crash
// would) and waits for it to exit.
func (c *Cluster) StopMon(ctx context.Context, sig syscall.Signal) error {
	old := c.PIDs["mon"]
	if err := c.signal("mon", sig); err != nil {
		return err
	}
	for processRuns(old) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("cephtest: the monitor (pid %d) lives on after %v: %w", old, sig, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// StartMon starts the monitor StopMon stopped, on the same data, config
// and addresses, as up.sh does, and returns once the cluster answers
// through it. down.sh finds it by its pid file.
func (c *Cluster) StartMon(ctx context.Context) error {
	logFile, err := os.OpenFile(filepath.Join(c.Dir, "log", "mon.a.out"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command("ceph-mon", "-f", "--conf", c.Conf, "-i", "a")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cephtest: starting the monitor again: %w", err)
	}
	go func() { _ = cmd.Wait() }() // reaped when down.sh stops it
	c.PIDs["mon"] = cmd.Process.Pid
	for {
		probe, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Ceph(probe, "-s")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cephtest: the restarted monitor never answered: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// processRuns reports whether pid is a live process (not a zombie).
func processRuns(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && len(cmdline) > 0
}

func (c *Cluster) signal(daemon string, sig syscall.Signal) error {
	pid := c.PIDs[daemon]
	if pid <= 0 {
		return fmt.Errorf("cephtest: no pid for %s in %s", daemon, c.Dir)
	}
	return syscall.Kill(pid, sig)
}

// Ceph runs the ceph CLI as the admin user against this cluster and returns its
// combined output. Without a deadline on ctx it gives up after a minute. Test-setup
// convenience only.
func (c *Cluster) Ceph(ctx context.Context, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	full := append([]string{"--conf", c.Conf, "--id", c.AdminID, "--connect-timeout", "30"}, args...)
	cmd := exec.CommandContext(ctx, "ceph", full...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return string(out), fmt.Errorf("ceph %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ownerEnv makes up.sh start a watchdog that runs down.sh once this process is gone,
// so that a test binary killed by a timeout or a signal leaves no cluster behind.
func ownerEnv() []string {
	return []string{"CEPH_OWNER_PID=" + strconv.Itoa(os.Getpid())}
}

func up(dir string, env []string) (*Cluster, string, error) {
	out, err := runScript("up.sh", dir, env)
	if err != nil {
		return nil, out, err
	}
	c, err := Load(dir)
	return c, out, err
}

// runScript runs e2e/ceph/NAME DIR with a timeout; on timeout the script's process
// group gets SIGTERM (up.sh then stops what it started), and SIGKILL 20 s later.
func runScript(name, dir string, env []string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), ScriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "e2e", "ceph", name), dir)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", name, ScriptTimeout, err)
	}
	return string(out), err
}

// RepoRoot walks up from the working directory to the directory holding go.mod.
func RepoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("cephtest: go.mod not found above the working directory")
		}
		d = parent
	}
}
