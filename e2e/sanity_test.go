package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"gopkg.in/yaml.v2"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/kube"
)

// TestRBDSanity runs csi-sanity (Identity, Controller, Node, snapshots)
// against the RBD driver on the local cluster, with the restricted csi-rbd
// user and the fuse mapper. The controller knows the test's one node the
// way it knows a cluster's nodes from their CSINodes, so publishing to any
// other node ID is NotFound.
func TestRBDSanity(t *testing.T) {
	c := cephtest.Get(t)
	if !inOwnProcess(t, c) {
		return
	}
	cfg, _ := clusterConfig(t, c)
	// A pool of its own: ListVolumes specs count every volume in the pool.
	pool := createPool(t, c, uniqueName("sanity"))
	endpoint, _ := startDriver(t, driver.Options{
		Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Version: "test",
		Controller: true, Node: true, NodeID: "sanity-node", Mounter: "fuse",
		StateDir: shortTempDir(t), Config: cfg, Nodes: kube.NewFakeNodes("sanity-node"),
	})

	runSanity(t, endpoint, rbdSecrets(c), map[string]string{"clusterID": testClusterID, "pool": pool},
		"ControllerPublishVolumeSecret", "ControllerUnpublishVolumeSecret")
}

// sanityEnv marks a test binary run for one csi-sanity suite: Ginkgo runs
// one suite per process, and each driver has its own.
const sanityEnv = "PELAGIC_E2E_SANITY"

// inOwnProcess runs test t in a test binary of its own, on cluster c, unless
// this is that binary: there it returns true, here false, t passing or
// failing as the other did (its output shown when it failed, its summary
// always). Arguments -ginkgo.* go along.
func inOwnProcess(t *testing.T, c *cephtest.Cluster) bool {
	if os.Getenv(sanityEnv) == t.Name() {
		return true
	}
	args := []string{"-test.run=^" + t.Name() + "$", "-test.v", "-test.timeout=30m"}
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-ginkgo.") {
			args = append(args, a)
		}
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), sanityEnv+"="+t.Name(), cephtest.EnvReuse+"="+c.Dir)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(ansiColour.ReplaceAllString(string(out), ""), "\n") {
		if strings.Contains(line, "Ran ") || strings.Contains(line, "Passed") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if err != nil {
		t.Fatalf("csi-sanity in its own process: %v\n%s", err, out)
	}
	return false
}

var ansiColour = regexp.MustCompile("\x1b\\[[0-9;]*m")

// runSanity runs csi-sanity against the driver at endpoint, with params as
// the class, and secrets in every call that carries them (the calls of
// more, besides those of every driver).
func runSanity(t *testing.T, endpoint string, secrets, params map[string]string, more ...string) {
	all := map[string]map[string]string{}
	for _, k := range append([]string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret",
		"NodeStageVolumeSecret", "NodePublishVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret",
		"ControllerExpandVolumeSecret", "ListSnapshotsSecret", "GetSnapshotSecret"}, more...) {
		all[k] = secrets
	}
	secretsYAML, err := yaml.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secretsFile := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(secretsFile, secretsYAML, 0o600); err != nil {
		t.Fatal(err)
	}
	config := sanity.NewTestConfig()
	config.Address = endpoint
	config.SecretsFile = secretsFile
	config.TestVolumeSize = 64 << 20
	config.TestVolumeExpandSize = 128 << 20
	config.TestVolumeParameters = params
	config.TargetPath = filepath.Join(dir, "target")
	config.StagingPath = filepath.Join(dir, "staging")
	config.IdempotentCount = 2
	sanity.Test(t, config)
}
