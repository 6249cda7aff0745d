package ctl

import (
	"context"
	"strings"
)

// When a command connects to Ceph.
const (
	cephAlways = iota // it cannot work without
	cephIfKey         // only when a key is given (node commands)
	cephNever
)

// command is one pelagicctl command: its words, its arguments and flags,
// and what it does once connected.
type command struct {
	words  []string
	params []string // "[X]" is optional
	flags  []string // flags beyond the global ones
	ceph   int
	// firstIsVolume: the first argument, a volume ID, decides the cluster.
	firstIsVolume bool
	hidden        bool
	short, long   string
	run           func(ctx context.Context, s *session, args []string) (report, error)
	// local runs without a session (completion).
	local func(ctx context.Context, t Tool, o *options, args []string) error
}

func (c *command) title() string {
	return strings.TrimSpace(strings.Join(c.words, " ") + " " + strings.Join(c.params, " "))
}

// namesPool tells whether arg is a bare pool name where the command takes
// POOL or VOLUME: no slash, no volume ID, no -n.
func (c *command) namesPool(arg string, o *options) bool {
	return len(c.params) > 0 && strings.Contains(c.params[0], "POOL") && !strings.Contains(arg, "/") &&
		!strings.HasPrefix(arg, "0001-") && o.namespace == ""
}

func (c *command) minArgs() int {
	n := 0
	for _, p := range c.params {
		if !strings.HasPrefix(p, "[") {
			n++
		}
	}
	return n
}

func commands() []command {
	return []command{
		{words: []string{"status"}, params: []string{"VOLUME"}, flags: []string{"fs"}, firstIsVolume: true, run: runStatus,
			short: "who holds the volume, its PVC, pods, nodes, and one verdict",
			long: "Reads the attachment, mapping and fence records the controller decides by, the watchers, and with\n" +
				"Kubernetes access the PVC, its pods and their nodes, the VolumeAttachments and the nodes' readiness.\n" +
				"CephFS volumes show the subvolume, its quota and usage, and the clients that mount it, by node."},
		{words: []string{"ls"}, flags: []string{"pool", "node", "stale", "orphans"}, run: runList,
			short: "every Pelagic volume: PVC, size, used, attachment, verdict",
			long: "Lists the volumes of every pool holding a Pelagic journal (or --pool). --node keeps the volumes\n" +
				"attached to or mapped on a node, --stale those with a stale or unknown holder, --orphans adds the\n" +
				"images and journal entries no PV names, and the PVs whose image is gone."},
		{words: []string{"volumes"}, params: []string{"POOL"}, run: runVolumes, hidden: true,
			short: "ls --pool POOL (kept for scripts)"},
		{words: []string{"showmapped"}, flags: []string{"state-dir", "kubelet-dir", "node"}, ceph: cephNever, run: runShowMapped,
			short: "run on a node: each mapping, its paths, pods and the processes holding it",
			long: "Lists what this node maps (krbd, rbd-nbd, rbd-fuse), the staging and target paths the node plugin\n" +
				"recorded (--state-dir), the pods those paths belong to (from the kubelet's paths) and the processes\n" +
				"that hold the device or a file below its mounts open (from /proc)."},
		{words: []string{"unmap"}, params: []string{"VOLUME|DEVICE"}, flags: []string{"state-dir", "kubelet-dir", "kill", "node"},
			ceph: cephIfKey, run: runUnmap,
			short: "run on a node: unmount targets and staging, then unmap",
			long: "Unmounts every target, then the staging path, then unmaps. It kills nothing by itself: when\n" +
				"processes hold the volume it names them and stops; --kill sends them SIGTERM first. With a key it\n" +
				"then removes this node's mapping record (--node, default the host name), as NodeUnstage does."},
		{words: []string{"fence", "ls"}, params: []string{"[POOL|VOLUME]"}, flags: []string{"pool"}, firstIsVolume: true,
			run: runFenceList, short: "fences recorded on the images"},
		{words: []string{"fence", "lift"}, params: []string{"VOLUME", "ADDR"}, flags: []string{"force"}, firstIsVolume: true,
			run: runFenceLift, short: "remove the blocklist entry and fence record of client ADDR"},
		{words: []string{"fence"}, params: []string{"CLIENT|NODE"}, flags: []string{"pool", "force", "reason", "expiry"},
			run: runFence, short: "blocklist one client instance, or every instance recorded for a node",
			long: "CLIENT is a client instance IP:PORT/NONCE; NODE a node ID. Fences through the controller's own path\n" +
				"(recorded as pending, blocklisted, completed, the watch waited for), with --reason and who ran it.\n" +
				"A holder whose attachment is current, or one no node recorded, is refused unless --force."},
		{words: []string{"doctor"}, params: []string{"VOLUME"}, flags: []string{"fix", "fs"}, firstIsVolume: true, run: runDoctor,
			short: "walk the Multi-Attach case and print the exact fix",
			long: "Which node holds the volume, is it Ready, is its attachment current, is its watch alive, is it\n" +
				"fenced, is the pod stuck and why; then the fix. --fix applies the safe part: it fences a provably\n" +
				"stale holder, finishes a pending fence, and clears an attachment record whose VolumeAttachment is\n" +
				"gone and whose node never mapped the volume. It never fences a holder whose attachment is current."},
		{words: []string{"du"}, params: []string{"[POOL|VOLUME]"}, flags: []string{"pool"}, firstIsVolume: true, run: runDU,
			short: "provisioned and used bytes, per volume and per pool"},
		{words: []string{"trash", "ls"}, params: []string{"[POOL]"}, flags: []string{"pool"}, run: runTrashList,
			short: "images in the trash, and what keeps them there"},
		{words: []string{"trash", "purge"}, params: []string{"[POOL]"}, flags: []string{"pool"}, run: runTrashPurge,
			short: "remove trashed Pelagic images nothing needs any more"},
		{words: []string{"snapshots"}, params: []string{"VOLUME"}, firstIsVolume: true, run: runSnapshots,
			short: "the volume's snapshots, with their clones"},
		{words: []string{"clones"}, params: []string{"VOLUME"}, firstIsVolume: true, run: runClones,
			short: "the clone tree around the volume: depths and flatten state"},
		{words: []string{"completion"}, params: []string{"bash|zsh|fish"}, ceph: cephNever, local: runCompletion,
			short: "shell completion script"},
		{words: []string{"__complete"}, params: []string{"[WORDS...]"}, ceph: cephNever, local: runComplete, hidden: true},
	}
}

// findCommand matches the leading words of args to a command: the longest
// match wins, so "fence ls" is not "fence CLIENT".
func findCommand(args []string) (*command, []string, error) {
	if len(args) == 0 {
		return nil, nil, usagef("no command given")
	}
	var best *command
	for _, c := range commands() {
		if len(args) < len(c.words) || strings.Join(args[:len(c.words)], " ") != strings.Join(c.words, " ") {
			continue
		}
		if best == nil || len(c.words) > len(best.words) {
			c := c
			best = &c
		}
	}
	if best == nil {
		return nil, nil, usagef("unknown command %q", args[0])
	}
	rest := args[len(best.words):]
	variadic := len(best.params) > 0 && strings.HasSuffix(best.params[len(best.params)-1], "...]")
	if len(rest) < best.minArgs() || (!variadic && len(rest) > len(best.params)) {
		if best.words[0] == "fence" && len(best.words) == 1 && len(rest) == 0 {
			return nil, nil, usagef("usage: pelagicctl fence CLIENT|NODE, fence ls [POOL|VOLUME], or fence lift VOLUME ADDR")
		}
		return nil, nil, usagef("usage: pelagicctl %s", best.title())
	}
	return best, rest, nil
}
