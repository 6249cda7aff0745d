// Package driver assembles the CSI services of one driver process from
// plain options, so the command and the end-to-end tests build the same thing.
package driver

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/daemonhost"
	"github.com/pelagic-csi/pelagic/pkg/kube"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Options describe one driver process.
type Options struct {
	Type       string // "rbd" or "cephfs"
	DriverName string
	Version    string
	Controller bool
	Node       bool
	NodeID     string
	Config     *ceph.Config
	KubeletDir string
	Mounter    string
	FuseNetNS  string // run rbd-fuse in this network namespace (see mapper.Config)
	// DaemonSocket is the daemon host's socket: the node starts rbd-fuse
	// and rbd-nbd through it, so they outlive the plugin. "": the plugin
	// starts them itself, and they die with its container.
	DaemonSocket string
	StateDir     string
	NodeLabels   map[string]string
	MaxVolumes   int64
	ProbeTimeout time.Duration
	FenceExpiry  time.Duration
	// FenceCheckInterval is how often the controller renews or lifts fences
	// (0: a quarter of FenceExpiry, at most 5 minutes).
	FenceCheckInterval time.Duration
	// SoftCloneDepth and HardCloneDepth bound clone chains (0: defaults).
	SoftCloneDepth int
	HardCloneDepth int
	// CephCSIInstanceID is the --instanceid of the ceph-csi whose volumes
	// the controller serves (default "default").
	CephCSIInstanceID string
	Timeouts          ceph.Timeouts
	// Nodes tells the controller which node IDs exist. When nil, it
	// watches the CSINodes of the cluster KubeConfig (or the in-cluster
	// config) reaches, if any.
	Nodes      kube.NodeChecker
	KubeConfig string
	// ObserveNodeOp, when set, is told how long each map, unmap, mkfs and
	// mount (Op*) of the RBD node, and each client mount of the CephFS
	// node, took, whatever its outcome.
	ObserveNodeOp func(op string, d time.Duration)
	// Holders, when set, is told of Multi-Attach refusals and fences.
	Holders rbd.HolderObserver
}

// Driver is an assembled set of services and what they share.
type Driver struct {
	Services csiserver.Services
	Conns    *ceph.ConnPool
	stop     context.CancelFunc
}

// New builds the services o asks for.
func New(o Options) (*Driver, error) {
	conns := ceph.NewConnPool(o.Timeouts)
	ctx, stop := context.WithCancel(context.Background())
	d := &Driver{Conns: conns, stop: stop}
	d.Services.Identity = csiserver.NewIdentity(csiserver.IdentityOptions{
		Name:         o.DriverName,
		Version:      o.Version,
		Controller:   o.Controller,
		Expansion:    true, // both grow volumes online
		Topology:     advertisesTopology(o),
		Prober:       &ceph.Prober{Config: o.Config, Pool: conns},
		ProbeTimeout: o.ProbeTimeout,
	})
	switch o.Type {
	case "rbd":
		connector := &rbd.CephConnector{Config: o.Config, Conns: conns}
		if o.Controller {
			nodes := o.Nodes
			if nodes == nil {
				var err error
				if nodes, err = kube.WatchCSINodes(ctx, o.KubeConfig, o.DriverName); err != nil {
					stop()
					return nil, err
				}
			}
			ctrl := rbd.NewController(rbd.ControllerOptions{
				Connector: connector, Config: o.Config, FenceExpiry: o.FenceExpiry,
				FenceKeeperInterval: o.FenceCheckInterval, Nodes: nodes,
				SoftCloneDepth: o.SoftCloneDepth, HardCloneDepth: o.HardCloneDepth, CephCSIInstanceID: o.CephCSIInstanceID,
				Holders: o.Holders})
			go ctrl.RunFenceKeeper(ctx)
			d.Services.Controller = ctrl
		}
		if o.Node {
			node, err := newRBDNode(o, connector)
			if err != nil {
				return nil, err
			}
			d.Services.Node = node
		}
	case "cephfs":
		connector := &cephfs.CephConnector{Config: o.Config, Conns: conns}
		if o.Controller {
			d.Services.Controller = cephfs.NewController(cephfs.ControllerOptions{Connector: connector, Config: o.Config,
				CephCSIInstanceID: o.CephCSIInstanceID})
		}
		if o.Node {
			node, err := newCephFSNode(o, connector)
			if err != nil {
				stop()
				return nil, err
			}
			d.Services.Node = node
		}
	default:
		return nil, fmt.Errorf("unknown driver type %q", o.Type)
	}
	return d, nil
}

// advertisesTopology: a node process with topology labels advertises
// VOLUME_ACCESSIBILITY_CONSTRAINTS, and only then reports the labels.
func advertisesTopology(o Options) bool { return o.Node && len(o.NodeLabels) > 0 }

// newRBDNode builds the node service and takes over what an earlier run of
// the plugin left: keyfiles a crash left are removed, and staged volumes
// (whose mappings outlive the plugin) are adopted.
func newRBDNode(o Options, connector rbd.Connector) (*rbd.Node, error) {
	runner := util.ExecRunner{DefaultTimeout: 2 * time.Minute}
	mounter := mount.NewHostMounter(mount.Config{Runner: runner})
	var daemons util.Runner = runner
	if o.DaemonSocket != "" {
		daemons = daemonhost.NewClient(o.DaemonSocket)
	}
	mappers, err := mapper.NewRegistry(mapper.Config{
		Runner: runner, Daemons: daemons, Mounts: mounter, StateDir: o.StateDir, Default: o.Mounter, FuseNetNS: o.FuseNetNS,
		Watchers: rbd.MapperWatchers{Connector: connector},
	})
	if err != nil {
		return nil, err
	}
	if err := mapper.SweepKeyfiles(o.StateDir); err != nil {
		return nil, fmt.Errorf("removing keyfiles left behind: %w", err)
	}
	var nodeMappers rbd.Mappers = mappers
	var nodeMounter mount.Mounter = mounter
	if o.ObserveNodeOp != nil {
		nodeMappers = timedMappers{Mappers: mappers, observe: o.ObserveNodeOp}
		nodeMounter = timedMounter{Mounter: mounter, observe: o.ObserveNodeOp}
	}
	node := rbd.NewNode(rbd.NodeOptions{
		Options: nodeOptions(o, nodeMounter, o.StateDir), Connector: connector, Config: o.Config, Mappers: nodeMappers,
		Holders: o.Holders,
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node.Adopt(ctx)
	return node, nil
}

// newCephFSNode builds the CephFS node service. Its state lives apart from
// RBD's (in STATE/cephfs), so that both plugins may share --state-dir; key
// files a crash left there are removed first.
func newCephFSNode(o Options, connector cephfs.Connector) (*cephfs.Node, error) {
	if o.StateDir == "" {
		return nil, fmt.Errorf("the CephFS node needs a state directory for its mounts")
	}
	state := filepath.Join(o.StateDir, "cephfs")
	keys := ceph.KeyFileDir(state)
	if err := ceph.RemoveKeyFiles(keys); err != nil {
		return nil, fmt.Errorf("removing keyfiles left behind: %w", err)
	}
	runner := util.ExecRunner{DefaultTimeout: 2 * time.Minute}
	mounter := mount.NewHostMounter(mount.Config{Runner: runner})
	var daemons util.Runner = runner
	if o.DaemonSocket != "" {
		daemons = daemonhost.NewClient(o.DaemonSocket)
	}
	mounters := map[string]cephfs.Mounter{
		cephfs.MounterFuse: &cephfs.FuseMounter{Daemons: daemons, Runner: runner, Mounts: mounter, KeyDir: keys,
			ProcRoot: "/proc", DevFuse: "/dev/fuse"},
		cephfs.MounterKernel: &cephfs.KernelMounter{Mounts: mounter, Runner: runner, KeyDir: keys, ProcRoot: "/proc"},
	}
	if o.ObserveNodeOp != nil {
		for name, m := range mounters {
			mounters[name] = timedFSMounter{Mounter: m, observe: o.ObserveNodeOp}
		}
	}
	return cephfs.NewNode(cephfs.NodeOptions{
		Options: nodeOptions(o, mounter, state), Connector: connector, Config: o.Config, Mounters: mounters,
	}), nil
}

// nodeOptions are what both node services are told of the node; each
// keeps its state in stateDir.
func nodeOptions(o Options, m mount.Mounter, stateDir string) nodefs.Options {
	return nodefs.Options{NodeID: o.NodeID, Mounter: m, KubeletDir: o.KubeletDir, StateDir: stateDir,
		Topology: advertisesTopology(o), Labels: o.NodeLabels, MaxVolumes: o.MaxVolumes}
}

// Close stops background work and releases shared connections.
func (d *Driver) Close() {
	d.stop()
	d.Conns.Close()
}
