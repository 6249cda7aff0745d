// Package ctl is pelagicctl: it reads the records the Pelagic controller and
// nodes keep in RBD image metadata and tells an operator who holds a volume,
// and lifts fences. It lives outside package main so the integration tests
// can run it in-process against a real cluster.
package ctl

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// Defaults of the global flags.
const (
	DefaultConfigPath = "/etc/ceph-csi-config/config.json"
	DefaultUser       = "admin"
	DefaultTimeout    = 30 * time.Second
	// KeyEnv names the environment variable read for the key without --keyfile.
	KeyEnv = "PELAGIC_KEY"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // the command failed or refused
	ExitUsage  = 2 // the command line is wrong
)

const usageText = `usage: pelagicctl [flags] COMMAND

commands:
  status VOLUME               who holds the volume, and what publishing elsewhere would do
  fence ls POOL|VOLUME        fences recorded on the images of a pool
  fence lift VOLUME ADDR      remove the blocklist entry and fence record of client ADDR
  volumes POOL|VOLUME         the pool's volumes, their PVCs and whether they are in use

VOLUME is a CSI volume ID (0001-...) or POOL/IMAGE.

flags (anywhere on the line):
`

// Tool is pelagicctl with its outputs and its way to Ceph. The zero value of
// every field but Stdout and Stderr picks the real thing.
type Tool struct {
	Stdout, Stderr io.Writer
	// Connector opens clusters; nil connects through librados with the
	// --timeout set on every RADOS operation.
	Connector rbd.Connector
	// Getenv reads the environment; nil is os.Getenv.
	Getenv func(string) string
	// Now tells whether fences are still in force; nil is time.Now.
	Now func() time.Time
}

// Run runs pelagicctl with the real cluster connector and returns the exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return Tool{Stdout: stdout, Stderr: stderr}.Run(ctx, args)
}

// options are the parsed command line.
type options struct {
	configPath string
	clusterID  string
	user       string
	keyFile    string
	timeout    time.Duration
	output     string
	force      bool
	args       []string // the command and its arguments
}

// usageError is a wrong command line: exit code 2 and a usage hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// Run runs one command line and returns the exit code.
func (t Tool) Run(ctx context.Context, args []string) int {
	o, err := parseOptions(args, t.Stderr)
	if errors.Is(err, flag.ErrHelp) {
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
		fmt.Fprintf(t.Stderr, "pelagicctl: %v\nrun 'pelagicctl -h' for usage\n", err)
		return ExitUsage
	default:
		fmt.Fprintf(t.Stderr, "pelagicctl: %v\n", err)
		return ExitFailed
	}
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("pelagicctl", flag.ContinueOnError)
	// Parse errors are printed once, by Run, with a hint; -h prints the usage.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.configPath, "config", DefaultConfigPath, "ceph-csi cluster config (config.json)")
	fs.StringVar(&o.clusterID, "cluster-id", "", "cluster ID in the config (default: the only one, or the volume ID's)")
	fs.StringVar(&o.user, "id", DefaultUser, "cephx user, without the client. prefix")
	fs.StringVar(&o.keyFile, "keyfile", "", "file holding the user's base64 key, or a keyring (default: $"+KeyEnv+")")
	fs.DurationVar(&o.timeout, "timeout", DefaultTimeout, "bound on every Ceph call")
	fs.StringVar(&o.output, "o", "text", "output format: text or json")
	fs.BoolVar(&o.force, "force", false, "fence lift: lift even without a fence record, or while the client still watches")
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, usageText)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return nil, err
	}
	if err != nil {
		return nil, usageError{err.Error()}
	}
	o.args = pos
	switch {
	case o.output != "text" && o.output != "json":
		return nil, usagef("-o must be text or json, not %q", o.output)
	case o.timeout <= 0:
		return nil, usagef("--timeout must be positive")
	}
	return o, nil
}

// parseInterspersed parses flags before, between and after positional
// arguments, since operators append "-o json" after the volume.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// command is one pelagicctl command: its words, the names of its
// arguments, and what it does once connected. The first argument is
// always the VOLUME or POOL, which decides the cluster.
type command struct {
	words     []string
	params    []string
	wantImage bool // the first argument must name an image, not only a pool
	run       func(ctx context.Context, s *session, tgt target, args []string) (report, error)
}

func commands() []command {
	return []command{
		{words: []string{"status"}, params: []string{"VOLUME"}, wantImage: true, run: runStatus},
		{words: []string{"fence", "ls"}, params: []string{"POOL|VOLUME"}, run: runFenceList},
		{words: []string{"fence", "lift"}, params: []string{"VOLUME", "ADDR"}, wantImage: true, run: runFenceLift},
		{words: []string{"volumes"}, params: []string{"POOL|VOLUME"}, run: runVolumes},
	}
}

// findCommand matches the leading words of args to a command.
func findCommand(args []string) (*command, []string, error) {
	if len(args) == 0 {
		return nil, nil, usagef("no command given")
	}
	for _, c := range commands() {
		if len(args) < len(c.words) || strings.Join(args[:len(c.words)], " ") != strings.Join(c.words, " ") {
			continue
		}
		rest := args[len(c.words):]
		if len(rest) != len(c.params) {
			return nil, nil, usagef("usage: pelagicctl %s %s", strings.Join(c.words, " "), strings.Join(c.params, " "))
		}
		return &c, rest, nil
	}
	if args[0] == "fence" {
		return nil, nil, usagef("usage: pelagicctl fence ls POOL|VOLUME, or pelagicctl fence lift VOLUME ADDR")
	}
	return nil, nil, usagef("unknown command %q", args[0])
}

func (t Tool) dispatch(ctx context.Context, o *options) error {
	cmd, args, err := findCommand(o.args)
	if err != nil {
		return err
	}
	if o.force && strings.Join(cmd.words, " ") != "fence lift" {
		return usagef("--force only applies to fence lift")
	}
	tgt, err := parseTarget(args[0], cmd.wantImage)
	if err != nil {
		return err
	}
	cfg, err := ceph.LoadConfig(o.configPath)
	if err != nil {
		return err
	}
	cc, err := pickCluster(cfg, o.clusterID, tgt)
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
		defer conns.Close()
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
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	s := &session{cluster: timedCluster{Cluster: cl, timeout: o.timeout}, namespace: cc.RBD.RadosNamespace,
		now: now().UTC(), force: o.force}
	r, err := cmd.run(ctx, s, tgt, args)
	if err != nil {
		return err
	}
	if o.output == "json" {
		enc := json.NewEncoder(t.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	r.writeText(t.Stdout, s.now)
	return nil
}

// report is what a command found, printable as text or JSON.
type report interface {
	writeText(w io.Writer, now time.Time)
}

// pickCluster chooses the cluster: the volume ID's, else --cluster-id, else
// the only one configured.
func pickCluster(cfg *ceph.Config, flagID string, tgt target) (*ceph.ClusterConfig, error) {
	id := flagID
	if tgt.volumeID != nil {
		if flagID != "" && flagID != tgt.volumeID.ClusterID {
			return nil, usagef("volume %s belongs to cluster %q, not --cluster-id %q", tgt.arg, tgt.volumeID.ClusterID, flagID)
		}
		id = tgt.volumeID.ClusterID
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
	getenv := t.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	var key string
	if o.keyFile != "" {
		data, err := os.ReadFile(o.keyFile)
		if err != nil {
			return ceph.Credentials{}, fmt.Errorf("reading the key: %w", err)
		}
		if key = keyFromFile(string(data)); key == "" {
			return ceph.Credentials{}, fmt.Errorf("%s holds no cephx key (want the bare base64 key or a keyring)", o.keyFile)
		}
	} else if key = strings.TrimSpace(getenv(KeyEnv)); key == "" {
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
