package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

// Options are the driver's command-line settings.
type Options struct {
	Endpoint   string
	Type       string // "rbd" or "cephfs"
	Controller bool
	Node       bool
	NodeID     string
	DriverName string
	ConfigPath string
	KubeletDir string
	Mounter    string // node default for RBD: krbd, rbd-nbd or fuse
	KubeConfig string // Kubernetes access for the controller; "" means in-cluster, if any
	StateDir   string
	// DaemonSocket is the daemon host's socket; with DaemonHost this
	// process is that host and serves nothing else.
	DaemonSocket string
	DaemonHost   bool
	NodeLabels   string // topology, "key=value,key=value"
	MaxVolumes   int64
	CallTimeout  time.Duration
	ProbeTimeout time.Duration
	FenceExpiry  time.Duration
	FenceCheck   time.Duration
	// RegistrationDir is the kubelet's plugins_registry: when set, the node
	// plugin registers itself there (no node-driver-registrar needed).
	RegistrationDir string
	// HealthzAddress serves GET /healthz, answered by Probe ("": off).
	HealthzAddress string
	// MetricsAddress serves GET /metrics in the Prometheus text format,
	// and /healthz as HealthzAddress does ("": off).
	MetricsAddress string
	// Clone chain limits, named as ceph-csi names them.
	SoftCloneDepth int
	HardCloneDepth int
	// InstanceID is ceph-csi's --instanceid: whose journal to serve.
	InstanceID string
}

// Default driver names per type.
const (
	DefaultRBDDriverName    = "rbd.csi.pelagic.dev"
	DefaultCephFSDriverName = "cephfs.csi.pelagic.dev"
)

// ParseOptions parses args (without the program name) and validates them.
func ParseOptions(args []string, output io.Writer) (*Options, *flag.FlagSet, error) {
	o := &Options{}
	fs := flag.NewFlagSet("pelagic", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix:///path or tcp://host:port)")
	fs.StringVar(&o.Type, "type", "", "driver type: rbd or cephfs")
	fs.BoolVar(&o.Controller, "controller", false, "serve the Controller service")
	fs.BoolVar(&o.Node, "node", false, "serve the Node service")
	fs.StringVar(&o.NodeID, "nodeid", "", "this node's ID (required with --node)")
	fs.StringVar(&o.DriverName, "drivername", "", "CSI driver name (default rbd.csi.pelagic.dev or cephfs.csi.pelagic.dev)")
	fs.StringVar(&o.ConfigPath, "config", "/etc/ceph-csi-config/config.json", "path of the cluster config (ceph-csi config.json format)")
	fs.StringVar(&o.KubeletDir, "kubelet-dir", "", "when set, staging and target paths must lie inside it")
	fs.StringVar(&o.Mounter, "mounter", "krbd", "default RBD mapper on this node: krbd (or rbd), rbd-nbd (or nbd) or fuse (or rbd-fuse)")
	fs.StringVar(&o.KubeConfig, "kubeconfig", "",
		"kubeconfig the controller reads CSINodes with, to answer NotFound for unknown nodes (default: the in-cluster config when in a pod)")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/pelagic", "node state: mapping records, fuse mounts")
	fs.StringVar(&o.DaemonSocket, "daemon-socket", "",
		"the daemon host's unix socket: the node starts rbd-fuse, rbd-nbd and ceph-fuse through it, so they outlive the plugin (empty: the plugin starts them)")
	fs.BoolVar(&o.DaemonHost, "daemon-host", false,
		"run as the daemon host on --daemon-socket: start the node's rbd-fuse, rbd-nbd and ceph-fuse daemons for the plugin, nothing else")
	fs.StringVar(&o.NodeLabels, "node-labels", "", "topology labels of this node, key=value,...")
	fs.Int64Var(&o.MaxVolumes, "max-volumes", 0, "maximum volumes per node (0: no limit)")
	fs.DurationVar(&o.CallTimeout, "call-timeout", 2*time.Minute, "deadline of a CSI call when the caller sets none")
	fs.DurationVar(&o.ProbeTimeout, "probe-timeout", 5*time.Second, "deadline of the backend check behind Probe")
	fs.IntVar(&o.SoftCloneDepth, "rbdsoftmaxclonedepth", 4, "clones deeper than this are flattened in the background")
	fs.IntVar(&o.HardCloneDepth, "rbdhardmaxclonedepth", 8, "clones deeper than this are flattened before CreateVolume returns")
	fs.StringVar(&o.InstanceID, "instanceid", "default",
		"the --instanceid of the ceph-csi this driver replaces: its volumes' names are in csi.volumes.<instanceid>")
	fs.StringVar(&o.RegistrationDir, "registration-dir", "", "kubelet plugin registration directory (<kubelet root>/plugins_registry): register the node plugin there")
	fs.StringVar(&o.HealthzAddress, "healthz-address", "", "host:port to serve /healthz on for liveness probes (empty: off)")
	fs.StringVar(&o.MetricsAddress, "metrics-address", "", "host:port to serve Prometheus /metrics (and /healthz) on (empty: off)")
	fs.DurationVar(&o.FenceExpiry, "fence-expiry", 24*time.Hour,
		"how long one blocklisting of a stale holder's client lasts; renewed while its node still holds the mapping")
	fs.DurationVar(&o.FenceCheck, "fence-check-interval", 0,
		"how often fences are renewed or lifted (default a quarter of --fence-expiry, at most 5m)")
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	if fs.NArg() > 0 {
		return nil, fs, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return o, fs, o.Validate()
}

// Validate checks that the options make a runnable driver.
func (o *Options) Validate() error {
	if o.DaemonHost {
		return o.validateDaemonHost()
	}
	var errs []error
	switch o.Type {
	case "rbd":
		if o.DriverName == "" {
			o.DriverName = DefaultRBDDriverName
		}
	case "cephfs":
		if o.DriverName == "" {
			o.DriverName = DefaultCephFSDriverName
		}
	case "":
		errs = append(errs, errors.New("--type is required (rbd or cephfs)"))
	default:
		errs = append(errs, fmt.Errorf("--type=%q: must be rbd or cephfs", o.Type))
	}
	if !o.Controller && !o.Node {
		errs = append(errs, errors.New("at least one of --controller and --node is required"))
	}
	if o.Node && o.NodeID == "" {
		errs = append(errs, errors.New("--nodeid is required with --node"))
	}
	if o.DriverName != "" {
		if err := validateDriverName(o.DriverName); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Endpoint == "" {
		errs = append(errs, errors.New("--endpoint is required"))
	}
	if o.DaemonSocket != "" && !filepath.IsAbs(o.DaemonSocket) {
		errs = append(errs, fmt.Errorf("--daemon-socket=%q must be an absolute path", o.DaemonSocket))
	}
	if o.KubeletDir != "" && !filepath.IsAbs(o.KubeletDir) {
		errs = append(errs, fmt.Errorf("--kubelet-dir=%q must be an absolute path", o.KubeletDir))
	}
	if o.RegistrationDir != "" {
		errs = append(errs, o.validateRegistration())
	}
	if name, err := mapper.CanonicalName(o.Mounter); err != nil || name == "" {
		errs = append(errs, fmt.Errorf("--mounter=%q: must be krbd, rbd-nbd or fuse", o.Mounter))
	}
	if o.SoftCloneDepth < 1 || o.HardCloneDepth < o.SoftCloneDepth {
		errs = append(errs, errors.New("clone depths must satisfy 1 <= --rbdsoftmaxclonedepth <= --rbdhardmaxclonedepth"))
	}
	if strings.TrimSpace(o.InstanceID) == "" {
		errs = append(errs, errors.New("--instanceid must not be empty (ceph-csi's default is \"default\")"))
	}
	if o.MetricsAddress != "" && o.MetricsAddress == o.HealthzAddress {
		errs = append(errs, errors.New("--metrics-address serves /healthz too: leave out --healthz-address, or give it another port"))
	}
	if o.MaxVolumes < 0 {
		errs = append(errs, errors.New("--max-volumes must not be negative"))
	}
	if o.FenceCheck < 0 {
		errs = append(errs, errors.New("--fence-check-interval must not be negative"))
	}
	if o.CallTimeout <= 0 || o.ProbeTimeout <= 0 || o.FenceExpiry <= 0 {
		errs = append(errs, errors.New("--call-timeout, --probe-timeout and --fence-expiry must be positive"))
	}
	if _, err := ParseLabels(o.NodeLabels); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o *Options) validateDaemonHost() error {
	var errs []error
	if o.DaemonSocket == "" || !filepath.IsAbs(o.DaemonSocket) {
		errs = append(errs, fmt.Errorf("--daemon-host needs --daemon-socket, an absolute path (got %q)", o.DaemonSocket))
	}
	if o.Controller || o.Node || o.Type != "" {
		errs = append(errs, errors.New("--daemon-host serves no CSI: it excludes --type, --controller and --node"))
	}
	return errors.Join(errs...)
}

// validateRegistration checks what registering with the kubelet needs: a
// node plugin whose CSI endpoint is a socket the kubelet can open.
func (o *Options) validateRegistration() error {
	switch {
	case !o.Node:
		return errors.New("--registration-dir needs --node")
	case !filepath.IsAbs(o.RegistrationDir):
		return fmt.Errorf("--registration-dir=%q must be an absolute path", o.RegistrationDir)
	}
	if network, _, err := csiserver.ParseEndpoint(o.Endpoint); err == nil && network != "unix" {
		return fmt.Errorf("--registration-dir needs a unix socket --endpoint the kubelet can open, not %q", o.Endpoint)
	}
	return nil
}

// validateDriverName applies the CSI rule: at most 63 characters,
// alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric.
func validateDriverName(name string) error {
	bad := len(name) > 63
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		edge := i == 0 || i == len(name)-1
		if !alnum && (edge || (r != '-' && r != '_' && r != '.')) {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("--drivername=%q: must be at most 63 characters of [a-zA-Z0-9._-], starting and ending with a letter or digit", name)
	}
	return nil
}

// ParseLabels parses "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("--node-labels: %q is not key=value", kv)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}
