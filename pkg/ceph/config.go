// Package ceph holds what both drivers need of Ceph clusters: the cluster
// configuration (compatible with ceph-csi's config.json ConfigMap), the
// credentials taken from CSI secrets and the key files nodes hand them to
// Ceph clients in, a cache of RADOS connections, the cluster adapter
// (Cluster, Pool) over them, and Ceph's spellings of addresses.
package ceph

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ClusterConfig is one entry of the config.json list. Unknown fields are
// ignored so a ceph-csi ConfigMap with newer settings still loads.
type ClusterConfig struct {
	ClusterID string       `json:"clusterID"`
	Monitors  []string     `json:"monitors"`
	RBD       RBDConfig    `json:"rbd"`
	CephFS    CephFSConfig `json:"cephFS"`
}

// RBDConfig holds the per-cluster RBD settings.
type RBDConfig struct {
	RadosNamespace string `json:"radosNamespace"`
}

// CephFSConfig holds the per-cluster CephFS settings.
type CephFSConfig struct {
	SubvolumeGroup     string `json:"subvolumeGroup"`
	RadosNamespace     string `json:"radosNamespace"`
	KernelMountOptions string `json:"kernelMountOptions"`
	FuseMountOptions   string `json:"fuseMountOptions"`
}

// DefaultSubvolumeGroup is the group ceph-csi uses when none is configured.
const DefaultSubvolumeGroup = "csi"

// DefaultCephFSRadosNamespace is where in a filesystem's metadata pool
// ceph-csi keeps its CephFS journal unless the config names another.
const DefaultCephFSRadosNamespace = "csi"

// MonHost returns the monitors in librados mon_host form.
func (c *ClusterConfig) MonHost() string { return strings.Join(c.Monitors, ",") }

// SubvolumeGroup returns the configured group or the default.
func (c *ClusterConfig) SubvolumeGroup() string {
	if c.CephFS.SubvolumeGroup != "" {
		return c.CephFS.SubvolumeGroup
	}
	return DefaultSubvolumeGroup
}

// CephFSRadosNamespace returns the namespace of the metadata pool that
// holds the CephFS journals: the configured one or the default.
func (c *ClusterConfig) CephFSRadosNamespace() string {
	if c.CephFS.RadosNamespace != "" {
		return c.CephFS.RadosNamespace
	}
	return DefaultCephFSRadosNamespace
}

// Config is the set of clusters the driver may serve, by cluster ID.
type Config struct {
	clusters map[string]*ClusterConfig
	order    []string
}

// ErrUnknownCluster is returned for a cluster ID that is not configured.
var ErrUnknownCluster = errors.New("unknown cluster")

// ParseConfig parses the JSON list of clusters and validates every entry.
func ParseConfig(data []byte) (*Config, error) {
	var list []ClusterConfig
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("cluster config is not a JSON list of clusters: %w", err)
	}
	cfg := &Config{clusters: make(map[string]*ClusterConfig, len(list))}
	for i := range list {
		c := &list[i]
		if err := c.validate(); err != nil {
			return nil, fmt.Errorf("cluster config entry %d: %w", i, err)
		}
		if _, dup := cfg.clusters[c.ClusterID]; dup {
			return nil, fmt.Errorf("cluster config entry %d: clusterID %q appears twice", i, c.ClusterID)
		}
		cfg.clusters[c.ClusterID] = c
		cfg.order = append(cfg.order, c.ClusterID)
	}
	return cfg, nil
}

// LoadConfig reads and parses the config file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading cluster config: %w", err)
	}
	return ParseConfig(data)
}

func (c *ClusterConfig) validate() error {
	if strings.TrimSpace(c.ClusterID) == "" {
		return errors.New("clusterID is empty")
	}
	if len(c.Monitors) == 0 {
		return fmt.Errorf("cluster %q has no monitors", c.ClusterID)
	}
	for _, m := range c.Monitors {
		if strings.TrimSpace(m) == "" || strings.ContainsAny(m, " \t,") {
			return fmt.Errorf("cluster %q has an invalid monitor address %q", c.ClusterID, m)
		}
	}
	return nil
}

// Cluster returns the configuration of one cluster.
func (c *Config) Cluster(id string) (*ClusterConfig, error) {
	if cc, ok := c.clusters[id]; ok {
		return cc, nil
	}
	return nil, fmt.Errorf("%w %q: it is not in the cluster config", ErrUnknownCluster, id)
}

// Clusters returns every configured cluster in file order.
func (c *Config) Clusters() []*ClusterConfig {
	out := make([]*ClusterConfig, 0, len(c.order))
	for _, id := range c.order {
		out = append(out, c.clusters[id])
	}
	return out
}
