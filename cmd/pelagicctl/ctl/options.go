package ctl

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// options are the parsed command line.
type options struct {
	configPath string
	clusterID  string
	user       string
	keyFile    string
	timeout    time.Duration
	output     string
	kubeconfig string
	namespace  string
	pool       string
	node       string
	fsName     string
	instanceID string
	stateDir   string
	kubeletDir string
	reason     string
	expiry     time.Duration
	force      bool
	stale      bool
	orphans    bool
	kill       bool
	fix        bool
	help       bool
	set        map[string]bool // the flags given on the command line
	args       []string        // the command and its arguments
}

// globalFlags apply to every command.
var globalFlags = map[string]bool{"config": true, "cluster-id": true, "id": true, "keyfile": true, "timeout": true,
	"o": true, "output": true, "kubeconfig": true, "instanceid": true, "n": true, "namespace": true, "h": true, "help": true}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("pelagicctl", flag.ContinueOnError)
	// Parse errors are printed once, by Run, with a hint.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.configPath, "config", DefaultConfigPath, "ceph-csi cluster config (config.json)")
	fs.StringVar(&o.clusterID, "cluster-id", "", "cluster ID in the config (default: the only one, or the volume ID's)")
	fs.StringVar(&o.user, "id", DefaultUser, "cephx user, without the client. prefix")
	fs.StringVar(&o.keyFile, "keyfile", "", "file holding the user's base64 key, or a keyring (default: $"+KeyEnv+")")
	fs.DurationVar(&o.timeout, "timeout", DefaultTimeout, "bound on every Ceph and Kubernetes call")
	fs.StringVar(&o.output, "o", "text", "output format: text, json or yaml")
	fs.StringVar(&o.output, "output", "text", "same as -o")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, else in-cluster, else none)")
	fs.StringVar(&o.namespace, "n", "", "namespace of the PVC named alone")
	fs.StringVar(&o.namespace, "namespace", "", "same as -n")
	fs.StringVar(&o.instanceID, "instanceid", journal.DefaultCephCSIInstance,
		"the --instanceid of the ceph-csi whose volumes Pelagic serves, to find them in its journal")
	fs.StringVar(&o.pool, "pool", "", "ls, du, trash, fence: only this pool")
	fs.StringVar(&o.node, "node", "", "ls: only volumes attached to or mapped on this node; showmapped, unmap: this node's ID")
	fs.StringVar(&o.fsName, "fs", "", "CephFS filesystem of a CephFS volume given by ID alone (default: the PV's fsName)")
	fs.StringVar(&o.stateDir, "state-dir", DefaultStateDir, "showmapped, unmap: the node plugin's --state-dir")
	fs.StringVar(&o.kubeletDir, "kubelet-dir", DefaultKubeletDir, "showmapped, unmap: the kubelet's root directory")
	fs.StringVar(&o.reason, "reason", "", "fence: why, recorded with the fence")
	fs.DurationVar(&o.expiry, "expiry", rbd.DefaultFenceExpiry, "fence: how long the blocklist entry lasts")
	fs.BoolVar(&o.force, "force", false, "fence: also a current holder; fence lift: without a record or while it holds")
	fs.BoolVar(&o.stale, "stale", false, "ls: only volumes with a stale or unknown holder")
	fs.BoolVar(&o.orphans, "orphans", false, "ls: images, journal entries and PVs whose other half is gone")
	fs.BoolVar(&o.kill, "kill", false, "unmap: SIGTERM the processes holding the device")
	fs.BoolVar(&o.fix, "fix", false, "doctor: apply the safe part of the fix")
	fs.BoolVar(&o.help, "h", false, "help")
	fs.BoolVar(&o.help, "help", false, "help")
	return fs
}

func parseOptions(args []string) (*options, error) {
	o := &options{}
	fs := newFlagSet(o)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	o.args = pos
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	switch {
	case o.output != "text" && o.output != "json" && o.output != "yaml":
		return nil, usagef("-o must be text, json or yaml, not %q", o.output)
	case o.timeout <= 0:
		return nil, usagef("--timeout must be positive")
	case o.expiry <= 0:
		return nil, usagef("--expiry must be positive")
	}
	return o, nil
}

// parseInterspersed parses flags before, between and after positional
// arguments, since operators append "-o json" after the volume.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errors.New("-h takes no value")
			}
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

// checkFlags refuses a command-specific flag given to a command it does
// not apply to, so a typo never changes what a command does silently.
func (c *command) checkFlags(o *options) error {
	var wrong []string
	for name := range o.set {
		if globalFlags[name] || contains(c.flags, name) {
			continue
		}
		wrong = append(wrong, "--"+name)
	}
	if len(wrong) == 0 {
		return nil
	}
	sort.Strings(wrong)
	where := "no command"
	if len(c.flags) > 0 {
		where = strings.Join(prefixed("--", c.flags), ", ")
	}
	return usagef("%s does not apply to %s (it takes %s)", strings.Join(wrong, ", "), c.title(), where)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func prefixed(p string, list []string) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = p + s
	}
	return out
}

// writeHelp prints the usage: of one command when the line names one.
func (t Tool) writeHelp(o *options) {
	w := t.Stdout
	if c, _, err := findCommand(o.args); err == nil && len(o.args) > 0 {
		fmt.Fprintf(w, "usage: %s %s\n\n%s\n", t.name(), c.title(), c.long)
		if len(c.flags) > 0 {
			fmt.Fprintf(w, "\nflags: %s\n", strings.Join(prefixed("--", c.flags), " "))
		}
		return
	}
	fmt.Fprintf(w, "usage: %s [flags] COMMAND\n\ncommands:\n", t.name())
	for _, c := range commands() {
		if c.hidden {
			continue
		}
		fmt.Fprintf(w, "  %-34s %s\n", c.title(), c.short)
	}
	fmt.Fprint(w, `
VOLUME is a PVC (NAMESPACE/NAME, or NAME with -n NAMESPACE), a PV name, a CSI volume
ID (0001-...) or POOL/IMAGE. PVCs and PVs need Kubernetes access (--kubeconfig,
$KUBECONFIG or in-cluster); without it the tool works with Ceph alone and says what
it could not resolve.

flags (anywhere on the line):
`)
	fs := newFlagSet(&options{})
	fs.SetOutput(w)
	fs.PrintDefaults()
}
