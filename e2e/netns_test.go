package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testNet is a bridge on the host and one network namespace per test node,
// each joined to the bridge by a veth pair: the host (where the cluster
// listens) is .1, the nodes .2, .3, ... in a /24 that exists only here.
type testNet struct {
	bridge string
	subnet string // "10.250.X"
	nodes  []testNode
}

type testNode struct {
	name  string // namespace name
	addr  string
	netns string // /run/netns/NAME
}

// HostAddr is the bridge address the cluster binds to.
func (n *testNet) HostAddr() string { return n.subnet + ".1" }

func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newTestNet builds the network for count nodes and removes it at cleanup.
func newTestNet(t testing.TB, count int) *testNet {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 is needed for the two-node tests: %v", err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)[:5]
	n := &testNet{bridge: "pbr" + tag, subnet: fmt.Sprintf("10.250.%d", 10+int(b[2])%200)}
	t.Cleanup(func() {
		for _, node := range n.nodes {
			_ = exec.Command("ip", "netns", "del", node.name).Run()
		}
		_ = exec.Command("ip", "link", "del", n.bridge).Run()
	})
	ipCmd(t, "link", "add", n.bridge, "type", "bridge")
	ipCmd(t, "addr", "add", n.HostAddr()+"/24", "dev", n.bridge)
	ipCmd(t, "link", "set", n.bridge, "up")
	for i := range count {
		name := fmt.Sprintf("pel%s%c", tag, 'a'+i)
		host, peer := fmt.Sprintf("v%s%c", tag, 'a'+i), fmt.Sprintf("v%s%cp", tag, 'a'+i)
		node := testNode{name: name, addr: fmt.Sprintf("%s.%d", n.subnet, i+2), netns: "/run/netns/" + name}
		ipCmd(t, "netns", "add", name)
		n.nodes = append(n.nodes, node)
		ipCmd(t, "link", "add", host, "type", "veth", "peer", "name", peer)
		ipCmd(t, "link", "set", peer, "netns", name)
		ipCmd(t, "link", "set", host, "master", n.bridge)
		ipCmd(t, "link", "set", host, "up")
		ipCmd(t, "-n", name, "addr", "add", node.addr+"/24", "dev", peer)
		ipCmd(t, "-n", name, "link", "set", peer, "up")
		ipCmd(t, "-n", name, "link", "set", "lo", "up")
	}
	return n
}

// fusePIDs returns the rbd-fuse processes whose command line mentions dir.
func fusePIDs(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		s := string(cmd)
		if strings.HasPrefix(filepath.Base(strings.SplitN(s, "\x00", 2)[0]), "rbd-fuse") && strings.Contains(s, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cleanupNode is the last-resort cleanup of a test node: unmount the
// filesystems under its work directory, detach the loop devices backed by
// its rbd-fuse files, unmount those, then kill its rbd-fuse and ceph-fuse
// daemons.
func cleanupNode(stateDir, workDir string) {
	run := func(name string, args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, name, args...).Output()
		return out
	}
	unmountUnder(workDir, run)
	for _, line := range strings.Split(string(run("losetup", "-l", "-n", "-O", "NAME,BACK-FILE")), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[1], stateDir) {
			run("losetup", "-d", f[0])
		}
	}
	unmountUnder(stateDir, run)
	for _, pid := range append(fusePIDs(stateDir), cephFusePIDs(stateDir)...) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(dir string, run func(string, ...string) []byte) {
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var targets []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			targets = append(targets, f[4])
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	for _, m := range targets {
		run("umount", "-l", m)
	}
}
