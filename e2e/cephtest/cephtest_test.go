package cephtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

func TestMain(m *testing.M) { os.Exit(cephtest.Main(m)) }

func TestClusterAnswers(t *testing.T) {
	c := cephtest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.Ceph(ctx, "-s")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, c.FSID) {
		t.Errorf("ceph -s does not show fsid %s:\n%s", c.FSID, out)
	}
	if out, err := c.Ceph(ctx, "fs", "subvolumegroup", "ls", c.FSName); err != nil {
		t.Errorf("mgr volumes: %v\n%s", err, out)
	}
	loaded, err := cephtest.Load(c.Dir)
	if err != nil || loaded.Monitors != c.Monitors || loaded.PIDs["osd"] == 0 {
		t.Errorf("Load(%s) = %+v, %v", c.Dir, loaded, err)
	}
}

// The restricted users authenticate with nothing but the monitor address and their key
// (in a key file: a key in a command line is seen by every process on the machine, and
// the driver's own tests look for one there).
func TestRestrictedUsers(t *testing.T) {
	c := cephtest.Get(t)
	keyfile := func(key string) string {
		p := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, u := range []struct {
		id, key string
		args    []string
		want    string
	}{
		{c.RBDUserID, c.RBDUserKey, []string{"osd", "pool", "ls"}, c.Pool},
		{c.FSUserID, c.FSUserKey, []string{"fs", "ls"}, c.FSName},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		args := append([]string{"-c", "/dev/null", "-m", c.Monitors, "--id", u.id, "--keyfile", keyfile(u.key),
			"--connect-timeout", "20"}, u.args...)
		out, err := exec.CommandContext(ctx, "ceph", args...).CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), u.want) {
			t.Errorf("ceph --id %s %v: %v\n%s", u.id, u.args, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", "-c", "/dev/null", "-m", c.Monitors, "--id", c.RBDUserID,
		"--keyfile", keyfile(c.RBDUserKey), "ls", c.Pool).CombinedOutput()
	if err != nil {
		t.Errorf("rbd --id %s ls %s: %v\n%s", c.RBDUserID, c.Pool, err, out)
	}
}

func TestFreezeMon(t *testing.T) {
	c := cephtest.Get(t)
	if err := c.FreezeMon(); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = c.ThawMon()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if out, err := c.Ceph(ctx, "osd", "pool", "ls"); err == nil {
		t.Fatalf("ceph answered with a frozen mon:\n%s", out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Ceph took %v to give up", d)
	}
	if err := c.ThawMon(); err != nil {
		t.Fatal(err)
	}
	thawed = true
	ctx2, cancel2 := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel2()
	if out, err := c.Ceph(ctx2, "osd", "pool", "ls"); err != nil || !strings.Contains(out, c.Pool) {
		t.Errorf("after ThawMon: %v\n%s", err, out)
	}
}

// A private cluster on another address, side by side with the shared one.
func TestStartPrivate(t *testing.T) {
	shared := cephtest.Get(t)
	c := cephtest.Start(t, "CEPH_BIND_ADDR=127.0.0.3")
	if !strings.HasPrefix(c.Monitors, "v1:127.0.0.3:") || c.FSID == shared.FSID || c.Dir == shared.Dir {
		t.Fatalf("private cluster %+v looks like the shared one %+v", c, shared)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := c.Ceph(ctx, "fsid"); err != nil || !strings.Contains(out, c.FSID) {
		t.Errorf("ceph fsid: %v\n%s", err, out)
	}
}
