package e2e

import (
	"os"
	"path/filepath"
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
	cfg, _ := clusterConfig(t, c)
	// A pool of its own: ListVolumes specs count every volume in the pool.
	pool := createPool(t, c, uniqueName("sanity"))
	endpoint, _ := startDriver(t, driver.Options{
		Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Version: "test",
		Controller: true, Node: true, NodeID: "sanity-node", Mounter: "fuse",
		StateDir: shortTempDir(t), Config: cfg, Nodes: kube.NewFakeNodes("sanity-node"),
	})

	secrets := rbdSecrets(c)
	all := map[string]map[string]string{}
	for _, k := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerPublishVolumeSecret",
		"ControllerUnpublishVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret", "NodeStageVolumeSecret",
		"NodePublishVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret", "ControllerExpandVolumeSecret",
		"ListSnapshotsSecret", "GetSnapshotSecret"} {
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
	config.TestVolumeParameters = map[string]string{"clusterID": testClusterID, "pool": pool}
	config.TargetPath = filepath.Join(dir, "target")
	config.StagingPath = filepath.Join(dir, "staging")
	config.IdempotentCount = 2
	sanity.Test(t, config)
}
