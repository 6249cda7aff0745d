package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// TestProbeRestrictedUsers connects as both restricted CSI users, then
// proves Probe reports not-ready, within its deadline, once the monitors
// stop answering. It freezes the mon, so it uses a private cluster.
func TestProbeRestrictedUsers(t *testing.T) {
	c := cephtest.Start(t)
	cfg, _ := clusterConfig(t, c)
	const probeTimeout = 2 * time.Second
	endpoint, d := startDriver(t, driver.Options{
		Type: "rbd", DriverName: "rook-ceph.rbd.csi.ceph.com", Version: "test", Controller: true,
		Config: cfg, ProbeTimeout: probeTimeout,
	})
	cluster, err := cfg.Cluster(testClusterID)
	if err != nil {
		t.Fatal(err)
	}
	for _, creds := range []ceph.Credentials{{ID: c.RBDUserID, Key: c.RBDUserKey}, {ID: c.FSUserID, Key: c.FSUserKey}} {
		conn, err := d.Conns.Get(testContext(t, 30*time.Second), cluster, creds)
		if err != nil {
			t.Fatalf("connecting as %s: %v", creds, err)
		}
		if _, err := conn.MonCommand(testContext(t, 10*time.Second), map[string]any{"prefix": "mon stat"}); err != nil {
			t.Fatalf("mon command as %s: %v", creds, err)
		}
	}

	id := csi.NewIdentityClient(dial(t, endpoint))
	info, err := id.GetPluginInfo(testContext(t, 5*time.Second), &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "rook-ceph.rbd.csi.ceph.com" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	probe, err := id.Probe(testContext(t, 10*time.Second), &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("Probe with a healthy cluster = %v, %v; want ready", probe, err)
	}

	if err := c.FreezeMon(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.ThawMon() }()
	time.Sleep(5100 * time.Millisecond) // let the cached healthy result expire
	start := time.Now()
	probe, err = id.Probe(testContext(t, 30*time.Second), &csi.ProbeRequest{})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Probe with frozen monitors: %v", err)
	}
	if probe.GetReady().GetValue() {
		t.Fatal("Probe reports ready while the monitors are frozen")
	}
	if took > probeTimeout+time.Second {
		t.Fatalf("Probe took %v, more than its %v deadline", took, probeTimeout)
	}
	t.Logf("Probe with frozen monitors answered not-ready in %v", took.Round(time.Millisecond))
}

// TestWrongKeyNamesClusterNotKey checks a bad secret gives an error that
// names the cluster and user and never the key.
func TestWrongKeyNamesClusterNotKey(t *testing.T) {
	c := cephtest.Get(t)
	cfg, _ := clusterConfig(t, c)
	cluster, _ := cfg.Cluster(testClusterID)
	pool := ceph.NewConnPool(ceph.Timeouts{Mount: 5 * time.Second, MonOp: 5 * time.Second, OSDOp: 5 * time.Second})
	defer pool.Close()
	out, err := exec.Command("ceph-authtool", "--gen-print-key").Output()
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := strings.TrimSpace(string(out)) // well-formed, but not the user's
	_, err = pool.Get(testContext(t, 30*time.Second), cluster, ceph.Credentials{ID: c.RBDUserID, Key: wrongKey})
	if err == nil {
		t.Fatal("connecting with a wrong key succeeded")
	}
	msg := err.Error()
	if !strings.Contains(msg, "key in the secret") {
		t.Errorf("error does not point at the key: %s", msg)
	}
	if strings.Contains(msg, wrongKey) || strings.Contains(msg, c.RBDUserKey) {
		t.Fatalf("error leaks a key: %s", msg)
	}
	if !strings.Contains(msg, testClusterID) || !strings.Contains(msg, "client."+c.RBDUserID) {
		t.Fatalf("error does not name the cluster and user: %s", msg)
	}
	t.Logf("wrong key: %s", msg)
}
