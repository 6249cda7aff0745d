// Package ctl is pelagicctl (also installed as the kubectl plugin
// kubectl-pelagic): it reads the records the Pelagic controller and nodes
// keep in Ceph, matches them with what Kubernetes says, and tells an
// operator who holds a volume and what to do about it. It lives outside
// package main so the integration tests can run it in-process against a
// real cluster.
package ctl

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// Defaults of the global flags.
const (
	DefaultConfigPath = "/etc/ceph-csi-config/config.json"
	DefaultUser       = "admin"
	DefaultTimeout    = 30 * time.Second
	DefaultStateDir   = "/var/lib/pelagic"
	DefaultKubeletDir = "/var/lib/kubelet"
	// KeyEnv names the environment variable read for the key without --keyfile.
	KeyEnv = "PELAGIC_KEY"
	// PluginName is the name kubectl finds the plugin by; the same binary
	// under that name speaks as "kubectl pelagic".
	PluginName = "kubectl-pelagic"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // the command failed or refused
	ExitUsage  = 2 // the command line is wrong
)

// Tool is pelagicctl with its outputs and its ways to Ceph, Kubernetes and
// the node. The zero value of every field but Stdout and Stderr picks the
// real thing.
type Tool struct {
	Stdout, Stderr io.Writer
	// Name is how the tool calls itself in messages: "pelagicctl" (the
	// default) or "kubectl pelagic".
	Name string
	// Connector opens clusters; nil connects through librados with the
	// --timeout set on every RADOS operation.
	Connector rbd.Connector
	// Kube is the Kubernetes API; nil finds one from --kubeconfig,
	// $KUBECONFIG or the in-cluster config, and works without one when
	// there is none.
	Kube kubernetes.Interface
	// Catalog reads a pool's images, trash, snapshots and clone trees; nil
	// reads them with librbd.
	Catalog func(rbd.Pool) (Catalog, error)
	// FileSystems reaches the CephFS side of a cluster; nil uses the mgr
	// volumes module and the MDS sessions.
	FileSystems func(rbd.Cluster) (FileSystems, error)
	// Host is the node the node commands (showmapped, unmap) look at; nil
	// is this machine.
	Host *Host
	// Getenv reads the environment; nil is os.Getenv.
	Getenv func(string) string
	// Now tells whether fences are still in force; nil is time.Now.
	Now func() time.Time
}

// Run runs pelagicctl with the real connectors and returns the exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return Tool{Stdout: stdout, Stderr: stderr}.Run(ctx, args)
}

// ProgramName is how a binary run as arg0 calls itself: as
// kubectl-pelagic it speaks as "kubectl pelagic".
func ProgramName(arg0 string) string {
	base := arg0[strings.LastIndex(arg0, "/")+1:]
	if strings.HasPrefix(base, PluginName) || strings.HasPrefix(base, "kubectl_complete-pelagic") {
		return "kubectl pelagic"
	}
	return "pelagicctl"
}

func (t Tool) name() string {
	if t.Name == "" {
		return "pelagicctl"
	}
	return t.Name
}

func (t Tool) getenv(k string) string {
	if t.Getenv == nil {
		return os.Getenv(k)
	}
	return t.Getenv(k)
}

// usageError is a wrong command line: exit code 2 and a usage hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// refusal is a command that declined to act and printed why on stdout
// already; it exits non-zero with the message on stderr.
type refusal struct{ msg string }

func (e refusal) Error() string { return e.msg }

// Run runs one command line and returns the exit code.
func (t Tool) Run(ctx context.Context, args []string) int {
	o, err := parseOptions(args)
	if err == nil && o.help {
		t.writeHelp(o)
		return ExitOK
	}
	if err == nil {
		err = t.dispatch(ctx, o)
	}
	var ue usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(t.Stderr, "%s: %v\nrun '%s --help' for usage\n", t.name(), err, t.name())
		return ExitUsage
	default:
		fmt.Fprintf(t.Stderr, "%s: %v\n", t.name(), err)
		return ExitFailed
	}
}

func (t Tool) dispatch(ctx context.Context, o *options) error {
	cmd, args, err := findCommand(o.args)
	if err != nil {
		return err
	}
	if err := cmd.checkFlags(o); err != nil {
		return err
	}
	if cmd.local != nil {
		return cmd.local(ctx, t, o, args)
	}
	s, err := t.open(ctx, o, cmd, args)
	if err != nil {
		return err
	}
	defer s.close()
	r, err := cmd.run(ctx, s, args)
	if r != nil && !reflect.ValueOf(r).IsNil() {
		if werr := emit(t.Stdout, o.output, r, s.now); werr != nil {
			return werr
		}
	}
	return err
}

// open connects what cmd needs: Ceph (unless the command can do without
// and no key is given), and Kubernetes when it can be found.
func (t Tool) open(ctx context.Context, o *options, cmd *command, args []string) (*session, error) {
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	s := &session{tool: t, opts: o, now: now().UTC()}
	s.kube, s.kubeNote = t.kubeView(o)
	if cmd.ceph == cephNever || (cmd.ceph == cephIfKey && !t.haveKey(o)) {
		return s, nil
	}
	var clusterArg string
	if len(args) > 0 && cmd.firstIsVolume && !cmd.namesPool(args[0], o) {
		ref, err := s.resolveNames(ctx, args[0])
		if err != nil {
			return nil, err
		}
		s.ref, clusterArg = ref, ref.VolumeID
	}
	if err := s.connect(ctx, clusterArg); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// haveKey tells whether a key was given, for commands that use Ceph only
// when they can.
func (t Tool) haveKey(o *options) bool { return o.keyFile != "" || t.getenv(KeyEnv) != "" }

// connect opens the cluster the volume ID names, else --cluster-id, else
// the only one configured.
func (s *session) connect(ctx context.Context, arg string) error {
	o, t := s.opts, s.tool
	cfg, err := ceph.LoadConfig(o.configPath)
	if err != nil {
		return fmt.Errorf("%w (pass --config with ceph-csi's config.json: the ConfigMap ceph-csi-config)", err)
	}
	cc, err := pickCluster(cfg, o.clusterID, arg)
	if err != nil {
		return err
	}
	creds, err := t.credentials(o)
	if err != nil {
		return err
	}
	connector := t.Connector
	if connector == nil {
		conns := ceph.NewConnPool(ceph.Timeouts{OSDOp: o.timeout, MonOp: o.timeout, Mount: o.timeout})
		s.closers = append(s.closers, conns.Close)
		connector = &rbd.CephConnector{Config: cfg, Conns: conns}
	}
	cctx, cancel := context.WithTimeout(ctx, o.timeout)
	cl, err := connector.Connect(cctx, cc.ClusterID, creds)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		// librados retries a rejected key until its mount timeout, so a
		// wrong key looks like unreachable monitors.
		return fmt.Errorf("%w (within --timeout %v: monitors %s unreachable, or the user or key is wrong)",
			err, o.timeout, cc.MonHost())
	}
	if err != nil {
		return err
	}
	s.raw = cl
	s.cluster = timedCluster{Cluster: cl, timeout: o.timeout}
	s.cc = cc
	s.namespace = cc.RBD.RadosNamespace
	return nil
}

// pickCluster chooses the cluster: the volume ID's, else --cluster-id, else
// the only one configured.
func pickCluster(cfg *ceph.Config, flagID, arg string) (*ceph.ClusterConfig, error) {
	id := flagID
	if vid, ok := volumeIDOf(arg); ok {
		if flagID != "" && flagID != vid.ClusterID {
			return nil, usagef("volume %s belongs to cluster %q, not --cluster-id %q", arg, vid.ClusterID, flagID)
		}
		id = vid.ClusterID
	}
	if id != "" {
		return cfg.Cluster(id)
	}
	all := cfg.Clusters()
	switch len(all) {
	case 0:
		return nil, errors.New("the cluster config lists no clusters")
	case 1:
		return all[0], nil
	}
	ids := make([]string, len(all))
	for i, c := range all {
		ids[i] = c.ClusterID
	}
	return nil, usagef("the cluster config lists several clusters (%s): pass --cluster-id", strings.Join(ids, ", "))
}

// credentials reads the key from --keyfile or $PELAGIC_KEY. No error built
// here or later contains the key: Credentials prints only the user.
func (t Tool) credentials(o *options) (ceph.Credentials, error) {
	var key string
	if o.keyFile != "" {
		data, err := os.ReadFile(o.keyFile)
		if err != nil {
			return ceph.Credentials{}, fmt.Errorf("reading the key: %w", err)
		}
		if key = keyFromFile(string(data)); key == "" {
			return ceph.Credentials{}, fmt.Errorf("%s holds no cephx key (want the bare base64 key or a keyring)", o.keyFile)
		}
	} else if key = strings.TrimSpace(t.getenv(KeyEnv)); key == "" {
		return ceph.Credentials{}, usagef("no cephx key: pass --keyfile FILE or set %s", KeyEnv)
	}
	creds := ceph.Credentials{ID: strings.TrimPrefix(o.user, "client."), Key: key}
	if err := creds.Validate(); err != nil {
		return ceph.Credentials{}, err
	}
	return creds, nil
}

// keyFromFile accepts the bare key ceph auth print-key writes, or a
// keyring with a "key = ..." line, since that is what sits in /etc/ceph.
func keyFromFile(data string) string {
	data = strings.TrimSpace(data)
	if _, err := base64.StdEncoding.DecodeString(data); err == nil {
		return data
	}
	for _, line := range strings.Split(data, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
