package ceph

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A ceph-csi config.json as Rook writes it, with fields this driver does not use.
const cephCSIConfig = `[
  {
    "clusterID": "rook-ceph",
    "monitors": ["10.98.44.171:6789", "v2:10.98.44.172:3300/0"],
    "namespace": "rook-ceph",
    "cephFS": {"subvolumeGroup": "", "netNamespaceFilePath": "", "kernelMountOptions": "ms_mode=secure"},
    "rbd": {"radosNamespace": "tenant-a", "netNamespaceFilePath": "", "mirrorDaemonCount": 1},
    "nfs": {"netNamespaceFilePath": ""},
    "readAffinity": {"enabled": true, "crushLocationLabels": ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]}
  },
  {"clusterID": "backup", "monitors": ["mon.backup.example"], "cephFS": {"subvolumeGroup": "backups", "radosNamespace": "fsns"}}
]`

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(cephCSIConfig))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cfg.Clusters() {
		ids = append(ids, c.ClusterID)
	}
	if strings.Join(ids, ",") != "rook-ceph,backup" {
		t.Errorf("clusters %v, want file order", ids)
	}
	c, err := cfg.Cluster("rook-ceph")
	if err != nil {
		t.Fatal(err)
	}
	if c.MonHost() != "10.98.44.171:6789,v2:10.98.44.172:3300/0" || c.RBD.RadosNamespace != "tenant-a" ||
		c.SubvolumeGroup() != DefaultSubvolumeGroup || c.CephFS.KernelMountOptions != "ms_mode=secure" ||
		c.CephFSRadosNamespace() != DefaultCephFSRadosNamespace {
		t.Errorf("parsed %+v", c)
	}
	if b, _ := cfg.Cluster("backup"); b.SubvolumeGroup() != "backups" || b.CephFSRadosNamespace() != "fsns" {
		t.Errorf("subvolume group %q, namespace %q", b.SubvolumeGroup(), b.CephFSRadosNamespace())
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"not JSON", `{clusterID: x}`, "not a JSON list"},
		{"object, not list", `{"clusterID": "a", "monitors": ["m"]}`, "not a JSON list"},
		{"empty clusterID", `[{"clusterID": "", "monitors": ["m"]}]`, "clusterID is empty"},
		{"blank clusterID", `[{"clusterID": "  ", "monitors": ["m"]}]`, "clusterID is empty"},
		{"no monitors", `[{"clusterID": "a"}]`, `"a" has no monitors`},
		{"empty monitor", `[{"clusterID": "a", "monitors": [""]}]`, "invalid monitor"},
		{"monitor list in one string", `[{"clusterID": "a", "monitors": ["m1,m2"]}]`, "invalid monitor"},
		{"duplicate clusterID", `[{"clusterID": "a", "monitors": ["m"]}, {"clusterID": "a", "monitors": ["n"]}]`, `entry 1: clusterID "a" appears twice`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigUnknownCluster(t *testing.T) {
	cfg, err := ParseConfig([]byte(cephCSIConfig))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Cluster("staging-ceph")
	if !errors.Is(err, ErrUnknownCluster) || !strings.Contains(err.Error(), `"staging-ceph"`) {
		t.Errorf("got %v, want ErrUnknownCluster naming the cluster", err)
	}
}

func TestLoadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(cephCSIConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := LoadConfig(path); err != nil || len(cfg.Clusters()) != 2 {
		t.Errorf("LoadConfig: %v, %v", cfg, err)
	}
	if _, err := LoadConfig(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
