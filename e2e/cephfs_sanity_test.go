package e2e

import (
	"testing"

	"github.com/ceph/go-ceph/cephfs/admin"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// cephfsConfig writes the config.json of a ceph-csi ConfigMap whose
// cephFS section names group and the journal's RADOS namespace, and
// removes the group, and what a test left in it, when the test ends.
func cephfsConfig(t testing.TB, c *cephtest.Cluster, group, namespace string) (*ceph.Config, string) {
	t.Helper()
	t.Cleanup(func() { removeGroup(t, c, group) })
	return writeClusterConfig(t, c, map[string]any{"subvolumeGroup": group, "radosNamespace": namespace})
}

// removeGroup removes a subvolume group with every subvolume, snapshot
// and clone in it, as the admin.
func removeGroup(t testing.TB, c *cephtest.Cluster, group string) {
	fsa := admin.NewFromConn(adminConn(t, c))
	subs, err := fsa.ListSubVolumes(c.FSName, group)
	if err != nil {
		return // never made
	}
	for _, sub := range subs {
		_ = fsa.CancelClone(c.FSName, group, sub)
		snaps, _ := fsa.ListSubVolumeSnapshots(c.FSName, group, sub)
		for _, snap := range snaps {
			_ = fsa.ForceRemoveSubVolumeSnapshot(c.FSName, group, sub, snap)
		}
		_ = fsa.ForceRemoveSubVolume(c.FSName, group, sub)
	}
	if err := fsa.RemoveSubVolumeGroup(c.FSName, group); err != nil {
		t.Errorf("removing subvolume group %s: %v", group, err)
	}
}

// cephfsSecrets are the secrets Rook's rook-csi-cephfs-provisioner
// secret holds (adminID/adminKey), for the restricted csi-cephfs user.
func cephfsSecrets(c *cephtest.Cluster) map[string]string {
	return map[string]string{"adminID": c.FSUserID, "adminKey": c.FSUserKey}
}

// TestCephFSSanity runs csi-sanity (Identity, Controller, Node, snapshots)
// against the CephFS driver on the local cluster, as the restricted
// csi-cephfs user, with ceph-fuse, in a subvolume group that is not the
// default (the cluster config's cephFS.subvolumeGroup, created by the
// driver) and a journal namespace of its own (ListVolumes counts).
func TestCephFSSanity(t *testing.T) {
	c := cephtest.Get(t)
	if !inOwnProcess(t, c) {
		return
	}
	cfg, _ := cephfsConfig(t, c, uniqueName("sanity-group"), uniqueName("sanity"))
	endpoint, _ := startDriver(t, driver.Options{
		Type: "cephfs", DriverName: "cephfs.csi.pelagic.dev", Version: "test",
		Controller: true, Node: true, NodeID: "sanity-node", StateDir: shortTempDir(t), Config: cfg,
	})
	runSanity(t, endpoint, cephfsSecrets(c), map[string]string{"clusterID": testClusterID, "fsName": c.FSName, "mounter": "fuse"})
}
