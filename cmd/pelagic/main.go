// Command pelagic is the Pelagic CSI driver for Ceph RBD and CephFS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/daemonhost"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/kubeletplugin"
	"github.com/pelagic-csi/pelagic/pkg/metrics"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	args, klogArgs := splitKlogArgs(os.Args[1:], klogFlags)
	_ = klogFlags.Parse(klogArgs)

	opts, _, err := ParseOptions(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pelagic:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		klog.ErrorS(err, "driver stopped")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

// splitKlogArgs sends -v, --logtostderr and other klog flags to klog.
func splitKlogArgs(args []string, klogFlags *flag.FlagSet) (ours, theirs []string) {
	for _, a := range args {
		name := a
		for len(name) > 0 && name[0] == '-' {
			name = name[1:]
		}
		if i := indexByte(name, '='); i >= 0 {
			name = name[:i]
		}
		if klogFlags.Lookup(name) != nil {
			theirs = append(theirs, a)
		} else {
			ours = append(ours, a)
		}
	}
	return ours, theirs
}

func indexByte(s string, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return i
		}
	}
	return -1
}

func run(ctx context.Context, o *Options) error {
	if o.DaemonHost {
		klog.InfoS("starting the daemon host", "version", version, "socket", o.DaemonSocket)
		return daemonhost.Serve(ctx, daemonhost.Options{Socket: o.DaemonSocket})
	}
	cfg, err := ceph.LoadConfig(o.ConfigPath)
	if err != nil {
		return err
	}
	labels, _ := ParseLabels(o.NodeLabels) // validated with the options
	var reg *prometheus.Registry
	var rpc *metrics.RPC
	var observeNodeOp func(string, time.Duration)
	var holders rbd.HolderObserver
	if o.MetricsAddress != "" {
		reg, rpc = metrics.NewRegistry()
		observeNodeOp = metrics.NewNodeOps(reg).Observe
		holders = metrics.NewHolders(reg)
	}
	d, err := driver.New(driver.Options{
		Type: o.Type, DriverName: o.DriverName, Version: version,
		Controller: o.Controller, Node: o.Node, NodeID: o.NodeID, Config: cfg,
		KubeletDir: o.KubeletDir, Mounter: o.Mounter, StateDir: o.StateDir, DaemonSocket: o.DaemonSocket,
		KubeConfig: o.KubeConfig,
		NodeLabels: labels, MaxVolumes: o.MaxVolumes, ProbeTimeout: o.ProbeTimeout, FenceExpiry: o.FenceExpiry,
		FenceCheckInterval: o.FenceCheck,
		SoftCloneDepth:     o.SoftCloneDepth, HardCloneDepth: o.HardCloneDepth,
		CephCSIInstanceID: o.InstanceID, ObserveNodeOp: observeNodeOp, Holders: holders,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	klog.InfoS("starting", "driver", o.DriverName, "version", version, "type", o.Type,
		"controller", o.Controller, "node", o.Node, "nodeID", o.NodeID)
	var outer []grpc.UnaryServerInterceptor
	var servers []func(context.Context) error
	if o.MetricsAddress != "" {
		metrics.NewCephConnections(reg, d.Conns.State)
		outer = append(outer, rpc.Interceptor)
		servers = append(servers, metricsServer(o, reg, d.Services.Identity))
	}
	servers = append(servers, func(ctx context.Context) error {
		return csiserver.Serve(ctx, o.Endpoint, d.Services, o.CallTimeout, outer...)
	})
	if o.HealthzAddress != "" {
		servers = append(servers, func(ctx context.Context) error {
			return kubeletplugin.ServeHealthz(ctx, o.HealthzAddress, d.Services.Identity, o.ProbeTimeout)
		})
	}
	if o.RegistrationDir != "" {
		_, socket, _ := csiserver.ParseEndpoint(o.Endpoint) // validated with the options
		reg := kubeletplugin.NewRegistration(kubeletplugin.RegistrationOptions{
			DriverName: o.DriverName, Endpoint: socket, Dir: o.RegistrationDir})
		servers = append(servers, reg.Serve)
	}
	return serveAll(ctx, servers...)
}

// metricsServer returns the server of reg's metrics, and of /healthz
// from prober.
func metricsServer(o *Options, reg *prometheus.Registry, prober kubeletplugin.Prober) func(context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	mux.Handle("GET /healthz", kubeletplugin.Healthz(prober, o.ProbeTimeout))
	return func(ctx context.Context) error {
		return kubeletplugin.ServeHTTP(ctx, o.MetricsAddress, mux, "metrics")
	}
}

// serveAll runs every server until ctx ends or one of them fails, which
// stops the others; it returns the first error.
func serveAll(ctx context.Context, servers ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(servers))
	for _, serve := range servers {
		go func() { errs <- serve(ctx) }()
	}
	var first error
	for range servers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
		cancel()
	}
	return first
}
