package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

func TestMain(m *testing.M) {
	if os.Getenv(controllerProcessEnv) != "" {
		os.Exit(runControllerProcess())
	}
	if os.Getenv(nodeProcessEnv) != "" {
		os.Exit(runNodeProcess())
	}
	if os.Getenv(daemonHostEnv) != "" {
		os.Exit(runDaemonHost())
	}
	os.Exit(cephtest.Main(m))
}

const testClusterID = "e2e"

// clusterConfig writes the config.json a ceph-csi ConfigMap would hold.
func clusterConfig(t testing.TB, c *cephtest.Cluster) (*ceph.Config, string) {
	t.Helper()
	data, err := json.Marshal([]map[string]any{{
		"clusterID": testClusterID,
		"monitors":  []string{c.Monitors},
		"cephFS":    map[string]any{"subvolumeGroup": "csi"},
		"rbd":       map[string]any{},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return loadConfig(t, data)
}

// loadConfig writes config.json data where the driver reads it, and loads it.
func loadConfig(t testing.TB, data []byte) (*ceph.Config, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ceph.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, path
}

// rbdSecrets are the secrets a rook-ceph-block class hands the driver.
func rbdSecrets(c *cephtest.Cluster) map[string]string {
	return map[string]string{"userID": c.RBDUserID, "userKey": c.RBDUserKey}
}

// startDriver serves o's services on a unix socket for the test's life.
func startDriver(t testing.TB, o driver.Options) (endpoint string, d *driver.Driver) {
	t.Helper()
	d, err := driver.New(o)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(shortTempDir(t), "csi.sock")
	lis, err := csiserver.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := csiserver.NewServer(d.Services, time.Minute)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		d.Close()
	})
	return "unix://" + sock, d
}

// shortTempDir keeps unix socket paths under the 108-byte limit.
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "pel")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func dial(t testing.TB, endpoint string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

// createPool makes an RBD pool for one test and removes it afterwards.
func createPool(t testing.TB, c *cephtest.Cluster, name string) string {
	t.Helper()
	ctx := testContext(t, 2*time.Minute)
	for _, args := range [][]string{
		{"osd", "pool", "create", name, "8"},
		{"osd", "pool", "application", "enable", name, "rbd"},
	} {
		if out, err := c.Ceph(ctx, args...); err != nil {
			t.Fatalf("ceph %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = c.Ceph(ctx, "osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it")
	})
	return name
}

// writeSynced writes data and fsyncs it, returning the first error.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	return errors.Join(werr, f.Sync(), f.Close())
}
