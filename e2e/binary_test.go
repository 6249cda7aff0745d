package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

// buildPelagic builds cmd/pelagic into the test's temporary directory.
func buildPelagic(t *testing.T) string {
	t.Helper()
	root, err := cephtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pelagic")
	cmd := exec.Command("go", "build", "-tags", "pacific,grpcnotrace", "-o", bin, "./cmd/pelagic") // as make build
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/pelagic: %v: %s", err, out)
	}
	return bin
}

// freeAddr returns a 127.0.0.1 address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestDriverProcessKeepsSecretsAndCounts runs the pelagic binary as one
// process serving the controller and a fuse node, at the most verbose
// logging, through a volume's life: create, publish, stage, publish on the
// node, snapshot, and back, plus a call with a wrong key. No line it
// logged, no command line of its daemons and no file in its state
// directory carries a key it was given, and its metrics endpoint counted
// the calls by method and code and timed them, timed the node's map,
// mkfs, mount and unmap, and counted a Multi-Attach refusal.
func TestDriverProcessKeepsSecretsAndCounts(t *testing.T) {
	e := newControllerEnv(t)
	bin := buildPelagic(t)
	state, work := shortTempDir(t), t.TempDir()
	t.Cleanup(func() { cleanupNode(state, work) })
	sock := filepath.Join(shortTempDir(t), "csi.sock")
	metricsAddr := freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "pelagic.log")
	wrongKey := otherSecret(t, e.cluster.RBDUserKey)
	secrets := map[string]string{"the rbd user's key": e.cluster.RBDUserKey, "the wrong key": wrongKey,
		"the admin key": e.cluster.AdminKey}
	var redact []string
	for what, key := range secrets {
		redact = append(redact, key, "<"+what+">")
	}
	redacted := strings.NewReplacer(redact...).Replace
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--type", "rbd", "--controller", "--node", "--nodeid", "node-logs", "--mounter", "fuse",
		"--config", e.cfgPath, "--state-dir", state, "--endpoint", "unix://"+sock, "--metrics-address", metricsAddr, "-v=5")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			logs, _ := os.ReadFile(logPath)
			t.Logf("the driver's log, keys redacted:\n%s", redacted(string(logs)))
		}
	})
	ctx := testContext(t, time.Minute)
	conn := dial(t, "unix://"+sock)
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	waitServing(t, ctx, csi.NewIdentityClient(conn), exited)

	volumeLife(t, ctx, e, ctrl, node, work, func(vol *csi.Volume) {
		for what, key := range secrets {
			if pids := argvHolding(key); len(pids) != 0 {
				t.Errorf("processes %v carry %s in their command line", pids, what)
			}
		}
		_, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(),
			NodeId: "node-other", VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
			VolumeContext: vol.GetVolumeContext(), Secrets: e.secrets})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("publishing a staged single-writer volume to another node = %v; want FailedPrecondition", err)
		}
	})
	bad := e.createReq(uniqueName("pvc-wrong-key"), 16<<20)
	bad.Secrets = map[string]string{"userID": e.cluster.RBDUserID, "userKey": wrongKey}
	if _, err := ctrl.CreateVolume(ctx, bad); err == nil {
		t.Error("CreateVolume with a wrong key succeeded")
	} else if strings.Contains(err.Error(), wrongKey) {
		t.Errorf("the error names the key: %v", redacted(err.Error()))
	} else {
		t.Logf("with a wrong key: %v", err)
	}

	scrape := scrapeMetrics(t, ctx, metricsAddr)
	for _, want := range []struct {
		name   string
		labels []string
	}{
		{"pelagic_csi_calls_total", []string{`method="CreateVolume"`, `code="OK"`}},
		{"pelagic_csi_calls_total", []string{`method="NodeStageVolume"`, `code="OK"`}},
		{"pelagic_csi_calls_total", []string{`method="CreateSnapshot"`, `code="OK"`}},
		{"pelagic_csi_calls_total", []string{`method="DeleteVolume"`, `code="OK"`}},
		{"pelagic_csi_call_duration_seconds_count", []string{`method="NodeStageVolume"`}},
		{"pelagic_csi_call_duration_seconds_sum", []string{`method="NodeStageVolume"`}},
		{"pelagic_node_operation_duration_seconds_count", []string{`operation="map"`}},
		{"pelagic_node_operation_duration_seconds_count", []string{`operation="mkfs"`}},
		{"pelagic_node_operation_duration_seconds_count", []string{`operation="mount"`}},
		{"pelagic_node_operation_duration_seconds_count", []string{`operation="unmap"`}},
		{"pelagic_multiattach_refusals_total", []string{`call="publish"`, `reason="attached"`}},
		{"pelagic_ceph_connections", []string{`state="connected"`}},
		{"pelagic_ceph_connect_failures_total", nil}, // the wrong key's
		{"go_goroutines", nil},
		{"process_resident_memory_bytes", nil},
	} {
		if v, ok := metricValue(scrape, want.name, want.labels...); !ok || v <= 0 {
			t.Errorf("metric %s%v = %v (found %v); want it to have moved", want.name, want.labels, v, ok)
		}
	}
	if v, ok := metricValue(scrape, "pelagic_csi_calls_total", `method="CreateVolume"`, `code="OK"`); v < 2 || !ok {
		t.Errorf("CreateVolume OK counted %v times; want 2 (the volume and its restore)", v)
	}
	failed := false
	for _, line := range strings.Split(grepLines(scrape, "pelagic_csi_calls_total{"), "\n") {
		failed = failed || (strings.Contains(line, `method="CreateVolume"`) && !strings.Contains(line, `code="OK"`))
	}
	if !failed {
		t.Errorf("the call with a wrong key is not counted by its code:\n%s", grepLines(scrape, "calls_total"))
	}

	stop() // what it logs on the way out counts too
	logs, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(logs, []byte("\n")); n < 20 {
		t.Fatalf("the driver logged only %d lines at -v 5:\n%s", n, logs)
	}
	sc := bufio.NewScanner(bytes.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	err = filepath.WalkDir(state, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		for what, key := range secrets {
			if bytes.Contains(b, []byte(key)) {
				t.Errorf("%s, left in the state directory, carries %s", path, what)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for line := 1; sc.Scan(); line++ {
		for what, key := range secrets {
			if strings.Contains(sc.Text(), key) {
				t.Errorf("log line %d carries %s: %s", line, what, redacted(sc.Text()))
			}
		}
	}
	t.Logf("scanned %d log lines for %d secrets", bytes.Count(logs, []byte("\n")), len(secrets))
}

// otherSecret returns a cephx key like key, its secret changed: the
// first bytes are a header, which authentication ignores.
func otherSecret(t *testing.T, key string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(b) < 16 {
		t.Fatalf("not a cephx key: %v", err)
	}
	for i := len(b) - 16; i < len(b); i++ {
		b[i] ^= 0x5a
	}
	return base64.StdEncoding.EncodeToString(b)
}

// waitServing polls Probe until the driver answers ready.
func waitServing(t *testing.T, ctx context.Context, id csi.IdentityClient, exited <-chan struct{}) {
	t.Helper()
	for {
		select {
		case <-exited:
			t.Fatal("the driver exited")
		default:
		}
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && resp.GetReady().GetValue() {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the driver never answered Probe: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// argvHolding lists the processes whose command line holds s.
func argvHolding(s string) []string {
	var pids []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, path := range cmdlines {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, filepath.Base(filepath.Dir(path)))
		}
	}
	return pids
}

// volumeLife takes a volume through create, publish, stage (fuse), node
// publish, a write, snapshot, restore, and all the way back; whileStaged
// runs with the volume staged and published.
func volumeLife(t *testing.T, ctx context.Context, e *controllerEnv, ctrl csi.ControllerClient, node csi.NodeClient, work string,
	whileStaged func(*csi.Volume)) {
	t.Helper()
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	created, err := ctrl.CreateVolume(ctx, e.createReq(uniqueName("pvc-logs"), 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	vol := created.GetVolume()
	id := vol.GetVolumeId()
	pub, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-logs",
		VolumeCapability: rwo, VolumeContext: vol.GetVolumeContext(), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	staging, target := filepath.Join(work, "staging"), filepath.Join(work, "target")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: rwo, VolumeContext: vol.GetVolumeContext(), PublishContext: pub.GetPublishContext(),
		Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: rwo, VolumeContext: vol.GetVolumeContext(),
		PublishContext: pub.GetPublishContext()}); err != nil {
		t.Fatal(err)
	}
	if err := writeSynced(filepath.Join(target, "data"), []byte("logged life\n")); err != nil {
		t.Fatal(err)
	}
	whileStaged(vol)
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: uniqueName("snap-logs"), SourceVolumeId: id,
		Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	restoreReq := e.createReq(uniqueName("pvc-logs-restore"), 64<<20)
	restoreReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
	restored, err := ctrl.CreateVolume(ctx, restoreReq)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		what string
		call func() error
	}{
		{"NodeUnpublish", func() error {
			_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			return err
		}},
		{"NodeUnstage", func() error {
			_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			return err
		}},
		{"ControllerUnpublish", func() error {
			_, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id,
				NodeId: "node-logs", Secrets: e.secrets})
			return err
		}},
		{"DeleteVolume of the restore", func() error {
			_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: restored.GetVolume().GetVolumeId(), Secrets: e.secrets})
			return err
		}},
		{"DeleteSnapshot", func() error {
			_, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId(),
				Secrets: e.secrets})
			return err
		}},
		{"DeleteVolume", func() error {
			_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.call(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
}

// scrapeMetrics fetches the driver's metrics in the text format.
func scrapeMetrics(t *testing.T, ctx context.Context, addr string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s, %v", resp.Status, err)
	}
	return string(body)
}

// metricValue finds the sample of name whose labels include every one
// of labels (`key="value"`), in the Prometheus text format.
func metricValue(text, name string, labels ...string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		matched := true
		for _, l := range labels {
			matched = matched && strings.Contains(rest, l)
		}
		if !matched {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		return v, err == nil
	}
	return 0, false
}

func grepLines(text, word string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, word) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
