package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
)

// moveToSecondNode moves a single-writer volume between nodes the way it
// happens when a node dies. A StatefulSet's pod runs on node 1. Node 2 (a
// kubelet, containerd and node plugin of its own, in a network namespace at
// its own address) joins. While node 1 holds the volume, attaching it to
// node 2 is refused and the refusal names the holder. Node 1 is then cut off:
// its Ceph clients frozen past the watch timeout, its kubelet stopped; the
// out-of-service taint goes on. The pod must run on node 2 with the data, and
// exactly node 1's client must be fenced.
func moveToSecondNode(ctx context.Context, e *env) error {
	const ns = "s2-move"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	if err := e.apply(ctx, ns, moverManifest); err != nil {
		return err
	}
	if err := e.waitStatefulSet(ctx, ns, "mover", 1); err != nil {
		return err
	}
	if n, err := e.get(ctx, ns, "pod/mover-0", "{.spec.nodeName}"); err != nil || n != node1 {
		return fmt.Errorf("mover-0 runs on %q, want %s (%v)", n, node1, err)
	}
	token := randomToken()
	if _, err := e.exec(ctx, ns, "mover-0", "sh", "-c", "echo "+token+" > /data/token && sync"); err != nil {
		return err
	}
	pv, err := e.pvOf(ctx, ns, "data-mover-0")
	if err != nil {
		return err
	}
	pool, image, err := e.imageOf(ctx, pv)
	if err != nil {
		return err
	}
	e.step(start, "mover-0 writes on node 1 (PV %s, image %s/%s)", pv, pool, image)

	start = time.Now()
	for _, script := range [][]string{{"node.sh", e.dir, "2"}, {"csi.sh", e.dir, "node", "2"}} {
		if err := e.script(ctx, script...); err != nil {
			return err
		}
	}
	e.step(start, "node 2 up: kubelet, containerd and node plugin in their own network namespace")

	start = time.Now()
	holder, err := e.refusedWhileHeld(ctx, ns, pv)
	if err != nil {
		return err
	}
	e.step(start, "attach to node 2 refused while node 1 holds it: %s", holder)

	start = time.Now()
	node1Client, err := e.cutOffNode1(ctx, pool, image)
	if err != nil {
		return err
	}
	e.step(start, "node 1 cut off: its client %s frozen past the watch timeout, kubelet stopped, node NotReady", node1Client.ClientAddr)

	start = time.Now()
	if _, err := e.k(ctx, "taint", "node", node1, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"); err != nil {
		return err
	}
	if err := e.waitFor(ctx, 5*time.Minute, "mover-0 to run on node 2", func(ctx context.Context) (bool, string, error) {
		out, err := e.get(ctx, ns, "pod/mover-0", "{.spec.nodeName} {.status.phase} {.status.containerStatuses[0].ready}")
		return out == node2+" Running true", out, err
	}); err != nil {
		return fmt.Errorf("%w (pod events: %s)", err, e.events(ctx, ns, "Pod", "mover-0"))
	}
	if err := e.checkFile(ctx, ns, "mover-0", "/data/token", token); err != nil {
		return err
	}
	e.step(start, "out-of-service taint: mover-0 runs on node 2 with the data")

	if err := e.checkFenced(ctx, node1Client.ClientAddr); err != nil {
		return err
	}
	e.step(start, "exactly node 1's client %s is blocklisted", node1Client.ClientAddr)

	start = time.Now()
	werr, err := e.lateWriteFromNode1(ctx, node1Client, pool, image)
	if err != nil {
		return err
	}
	if err := e.checkFile(ctx, ns, "mover-0", "/data/token", token); err != nil {
		return err
	}
	e.step(start, "node 1 thawed: its late write %s and never reached the image; node 2's data intact", werr)
	return nil
}

// lateWriteFromNode1 thaws node 1's fenced client and writes a block through
// its device, synced, as a node that wakes up would. Nothing of it may reach
// the image in Ceph. It returns what the write itself reported.
func (e *env) lateWriteFromNode1(ctx context.Context, m fuseMapping, pool, image string) (string, error) {
	if err := syscall.Kill(m.PID, syscall.SIGCONT); err != nil {
		return "", fmt.Errorf("thawing node 1's rbd-fuse: %w", err)
	}
	block := bytes.Repeat([]byte(randomToken()[:16]), 4096/16)
	off := gib - int64(len(block)) // the last block: no filesystem metadata there
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(m.Device, os.O_WRONLY|os.O_SYNC, 0)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if _, err := f.WriteAt(block, off); err != nil {
			done <- err
			return
		}
		done <- f.Sync()
	}()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(time.Minute):
		werr = fmt.Errorf("still blocked after a minute")
	case <-ctx.Done():
		return "", ctx.Err()
	}
	got, err := e.readImage(pool, image, off, len(block))
	if err != nil {
		return "", err
	}
	if bytes.Equal(got, block) {
		return "", fmt.Errorf("node 1's late write reached the image at %d, after it was fenced (the write said %v)", off, werr)
	}
	if werr == nil {
		return "reported success", nil
	}
	return "failed: " + werr.Error(), nil
}

const moverManifest = `apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: mover
spec:
  serviceName: mover
  replicas: 1
  selector:
    matchLabels: {app: mover}
  template:
    metadata:
      labels: {app: mover}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: docker.io/library/busybox:1.35
          imagePullPolicy: IfNotPresent
          command: [sh, -c, 'trap "exit 0" TERM; sleep 1000000 & wait']
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: rook-ceph-block
        resources:
          requests: {storage: 1Gi}
`

// script runs one of e2e/k8s's scripts.
func (e *env) script(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(e.root, "e2e", "k8s", args[0])}, args[1:]...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// refusedWhileHeld tries to attach the volume to node 2 while node 1 holds
// it, twice. A pod on node 2 is refused by Kubernetes itself (Multi-Attach),
// its events naming the pod that holds the volume, and no attachment reaches
// the driver. A VolumeAttachment made by hand (what the attach-detach
// controller would make without that check) reaches the driver, which
// refuses it naming node 1 and its Ceph client.
func (e *env) refusedWhileHeld(ctx context.Context, ns, pv string) (string, error) {
	if err := e.apply(ctx, ns, podManifest("intruder", "data-mover-0", node2)); err != nil {
		return "", err
	}
	var refusal string
	if err := e.waitFor(ctx, time.Minute, "the intruder pod's Multi-Attach event", func(ctx context.Context) (bool, string, error) {
		evs, err := e.eventsOf(ctx, ns, "Pod", "intruder")
		for _, ev := range evs {
			if ev.Reason == "FailedAttachVolume" && strings.Contains(ev.Message, "Multi-Attach") && strings.Contains(ev.Message, "mover-0") {
				refusal = ev.Message
				return true, "", nil
			}
		}
		return false, fmt.Sprint(evs), err
	}); err != nil {
		return "", err
	}
	if phase, err := e.get(ctx, ns, "pod/intruder", "{.status.phase}"); err != nil || phase == "Running" {
		return "", fmt.Errorf("a pod on node 2 runs with the volume node 1 holds (%v)", err)
	}
	if va, err := e.attachmentOf(ctx, pv); err != nil || strings.Contains(va, node2) {
		return "", fmt.Errorf("an attachment to node 2 exists while node 1 holds the volume: %q (%v)", va, err)
	}
	if _, err := e.k(ctx, "-n", ns, "delete", "pod", "intruder", "--wait=true", "--timeout=1m"); err != nil {
		return "", err
	}

	const probe = "e2e-attach-to-node-2"
	if err := e.apply(ctx, "", fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: VolumeAttachment
metadata:
  name: %s
spec:
  attacher: %s
  nodeName: %s
  source: {persistentVolumeName: %s}
`, probe, driverName, node2, pv)); err != nil {
		return "", err
	}
	var msg string
	err := e.waitFor(ctx, 2*time.Minute, "the driver to refuse attaching to node 2", func(ctx context.Context) (bool, string, error) {
		out, err := e.get(ctx, "", "volumeattachment/"+probe, "{.status.attached} {.status.attachError.message}")
		msg = out
		if strings.HasPrefix(out, "true") {
			return false, "", fmt.Errorf("the driver attached the volume to node 2 while node 1 holds it")
		}
		return strings.Contains(out, "in use") && strings.Contains(out, "node "+node1), out, err
	})
	if _, derr := e.k(ctx, "delete", "volumeattachment", probe, "--wait=true", "--timeout=2m"); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		return "", err
	}
	if i := strings.Index(msg, "already in use: "); i >= 0 {
		msg = msg[i+len("already in use: "):]
	}
	return "Kubernetes: " + refusal + "; the driver: " + strings.TrimSpace(msg), nil
}

// fuseMapping is the part of the fuse mapper's state.json the scenario reads.
type fuseMapping struct {
	Image      string `json:"image"`
	PID        int    `json:"pid"`
	Device     string `json:"device"`
	ClientAddr string `json:"clientAddr"`
}

// cutOffNode1 freezes node 1's node plugin and the rbd-fuse client that maps
// the image, waits until Ceph has dropped that client's watch (the watch
// timeout), stops node 1's kubelet and waits until the node is NotReady. It
// returns the frozen client's mapping.
func (e *env) cutOffNode1(ctx context.Context, pool, image string) (fuseMapping, error) {
	states, _ := filepath.Glob(filepath.Join(e.dir, "node1", "state", "fuse", "*", "state.json"))
	var m fuseMapping
	for _, s := range states {
		var cand fuseMapping
		if b, err := os.ReadFile(s); err == nil && json.Unmarshal(b, &cand) == nil && cand.Image == image {
			m = cand
		}
	}
	if m.PID == 0 || m.ClientAddr == "" {
		return fuseMapping{}, fmt.Errorf("no rbd-fuse mapping of %s on node 1 (state files: %v)", image, states)
	}
	for _, name := range []string{"pelagic-node-1"} {
		if err := e.signalRecorded(name, syscall.SIGSTOP); err != nil {
			return fuseMapping{}, err
		}
	}
	if err := syscall.Kill(m.PID, syscall.SIGSTOP); err != nil {
		return fuseMapping{}, fmt.Errorf("freezing node 1's rbd-fuse (pid %d): %w", m.PID, err)
	}
	if err := e.signalRecorded("kubelet-1", syscall.SIGKILL); err != nil {
		return fuseMapping{}, err
	}
	if err := e.waitFor(ctx, 2*time.Minute, "Ceph to drop node 1's watch (watch timeout)", func(context.Context) (bool, string, error) {
		ws, err := e.watchers(pool, image)
		return err == nil && !strings.Contains(ws, addrOnly(m.ClientAddr)), ws, err
	}); err != nil {
		return fuseMapping{}, err
	}
	if err := e.waitFor(ctx, 2*time.Minute, "node 1 to be NotReady", func(ctx context.Context) (bool, string, error) {
		s, err := e.get(ctx, "", "node/"+node1, `{.status.conditions[?(@.type=="Ready")].status}`)
		return s != "True" && s != "", s, err
	}); err != nil {
		return fuseMapping{}, err
	}
	return m, nil
}

// addrOnly turns "v1:10.0.0.1:0/123" into "10.0.0.1:0/123".
func addrOnly(a string) string { return strings.TrimPrefix(strings.TrimPrefix(a, "v1:"), "v2:") }

// signalRecorded signals a process run.sh recorded in DIR/run.
func (e *env) signalRecorded(name string, sig syscall.Signal) error {
	b, err := os.ReadFile(filepath.Join(e.dir, "run", name+".pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	return syscall.Kill(pid, sig)
}

// watchers lists the image's watchers as Ceph sees them.
func (e *env) watchers(pool, image string) (string, error) {
	ioctx, err := e.conn.OpenIOContext(pool)
	if err != nil {
		return "", err
	}
	defer ioctx.Destroy()
	img, err := librbd.OpenImageReadOnly(ioctx, image, librbd.NoSnapshot)
	if err != nil {
		return "", err
	}
	defer img.Close()
	ws, err := img.ListWatchers()
	if err != nil {
		return "", err
	}
	var out []string
	for _, w := range ws {
		out = append(out, fmt.Sprintf("client.%d at %s", w.Id, w.Addr))
	}
	return strings.Join(out, ", "), nil
}

// renewalProbe is the address (in TEST-NET-1, for documentation: no client of
// this cluster has it) the controller blocklists to probe how renewal works.
const renewalProbe = "192.0.2.1:"

// checkFenced waits until the OSD blocklist holds node 1's client instance,
// and no other client: not node 2's, not another of node 1's address, no
// range.
func (e *env) checkFenced(ctx context.Context, client string) error {
	return e.waitFor(ctx, 30*time.Second, "node 1's client "+client+" to be blocklisted", func(context.Context) (bool, string, error) {
		entries, err := e.blocklist()
		if err != nil {
			return false, "", err
		}
		found := false
		for _, addr := range entries {
			switch {
			case addrOnly(addr) == addrOnly(client):
				found = true
			case strings.HasPrefix(addrOnly(addr), renewalProbe):
				e.logf("  2: the blocklist still holds the controller's renewal probe %s", addr)
			default:
				return false, "", fmt.Errorf("the blocklist holds %s besides node 1's client %s: %v", addr, client, entries)
			}
		}
		return found, fmt.Sprintf("blocklist: %v", entries), nil
	})
}

// blocklist lists the OSD blocklist's addresses. Pacific answers with one
// JSON array per kind of entry (addresses, then ranges).
func (e *env) blocklist() ([]string, error) {
	buf, _, err := e.conn.MonCommand([]byte(`{"prefix": "osd blocklist ls", "format": "json"}`))
	if err != nil {
		return nil, fmt.Errorf("osd blocklist ls: %w", err)
	}
	var addrs []string
	dec := json.NewDecoder(bytes.NewReader(buf))
	for dec.More() {
		var entries []struct {
			Addr string `json:"addr"`
		}
		if err := dec.Decode(&entries); err != nil {
			return nil, fmt.Errorf("osd blocklist ls: %w: %s", err, buf)
		}
		for _, en := range entries {
			addrs = append(addrs, en.Addr)
		}
	}
	return addrs, nil
}
