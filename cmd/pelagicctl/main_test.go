package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

const (
	testClusterID = "c1"
	testPoolID    = 7
	// testKey is a well-formed cephx key that must never appear in any output.
	testKey = "cGVsYWdpYy10ZXN0LWtleS1ub3QtYS1jZXBoeC1rZXk=" // base64 of a phrase, not a cephx key
	addrA   = "10.0.0.2:0/1001"
	addrB   = "10.0.0.3:0/2002"
)

// testNow is when every test runs, so fences are in force or expired at will.
var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// env is pelagicctl against one fake cluster with one pool "rbd".
type env struct {
	t          *testing.T
	cluster    *rbd.FakeCluster
	pool       *rbd.FakePool
	connector  *rbd.FakeConnector
	dir        string
	configPath string
	keyPath    string
	environ    map[string]string
	seq        int
	catalog    *ctl.FakeCatalog
	extra      func(*ctl.Tool) // adds fakes of Kubernetes, CephFS and the host
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool := rbd.NewFakePool("rbd", testPoolID)
	cluster := rbd.NewFakeCluster(testClusterID, pool)
	e := &env{t: t, cluster: cluster, pool: pool, connector: rbd.NewFakeConnector(cluster),
		dir: t.TempDir(), environ: map[string]string{}, catalog: &ctl.FakeCatalog{}}
	e.configPath = e.writeFile("config.json", fmt.Sprintf(`[{"clusterID": %q, "monitors": ["10.0.0.1:6789"]}]`, testClusterID))
	e.keyPath = e.writeFile("key", testKey+"\n")
	return e
}

func (e *env) writeFile(name, data string) string {
	e.t.Helper()
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// run runs pelagicctl with the env's config and keyfile; flags in args
// come later and override them.
func (e *env) run(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	return e.runRaw(append([]string{"--config", e.configPath, "--keyfile", e.keyPath}, args...)...)
}

// runRaw runs pelagicctl with exactly args.
func (e *env) runRaw(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errOut bytes.Buffer
	tool := ctl.Tool{Stdout: &out, Stderr: &errOut, Connector: e.connector,
		Getenv: func(k string) string { return e.environ[k] }, Now: func() time.Time { return testNow },
		Catalog: func(rbd.Pool) (ctl.Catalog, error) { return e.catalog, nil }}
	if e.extra != nil {
		e.extra(&tool)
	}
	code = tool.Run(context.Background(), args)
	return code, out.String(), errOut.String()
}

// addVolume makes a journaled image with an owner record, plus meta and
// watchers, and returns its image name and volume ID.
func (e *env) addVolume(meta map[string]string, watchers ...rbd.Watcher) (image, volumeID string) {
	e.t.Helper()
	e.seq++
	uuid := fmt.Sprintf("00000000-0000-4000-8000-%012d", e.seq)
	image = "csi-vol-" + uuid
	name := fmt.Sprintf("pvc-%d", e.seq)
	rec := &journal.Record{Kind: journal.Volume, Name: name, UUID: uuid, Backing: image, SizeBytes: 1 << 30}
	if err := e.pool.Reserve(context.Background(), rec); err != nil {
		e.t.Fatal(err)
	}
	owner, _ := json.Marshal(rbd.Owner{Name: name, PVC: fmt.Sprintf("data-%d", e.seq), Namespace: "default", PV: name})
	all := map[string]string{rbd.OwnerMetadataKey: string(owner)}
	for k, v := range meta {
		all[k] = v
	}
	e.pool.AddImage(image, 1<<30, all, watchers...)
	return image, volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID, UUID: uuid}.String()
}

// metadata returns the image's metadata as it is now.
func (e *env) metadata(image string) map[string]string {
	e.t.Helper()
	m, err := e.pool.Metadata(context.Background(), image)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// Metadata records as the controller and nodes write them.
func attachRec(node string) map[string]string {
	b, _ := json.Marshal(rbd.Attachment{Node: node, Mode: "SINGLE_NODE_WRITER", Since: testNow.Add(-time.Hour)})
	return map[string]string{"pelagic.csi/attach." + node: string(b)}
}

func mapRec(node, addr string, id int64) map[string]string {
	b, _ := json.Marshal(rbd.NodeMapping{Node: node, ClientAddr: addr, ClientID: fmt.Sprintf("client.%d", id),
		Mapper: "krbd", Since: testNow.Add(-time.Hour)})
	return map[string]string{"pelagic.csi/map." + node: string(b)}
}

func fenceRec(node, addr string, id int64, expires time.Time) map[string]string {
	b, _ := json.Marshal(rbd.Fence{Node: node, ClientAddr: addr, ClientID: fmt.Sprintf("client.%d", id),
		At: testNow.Add(-time.Minute), Expires: expires, Reason: "node " + node + " still mapped it after unpublish"})
	return map[string]string{rbd.FenceMetadataKey(addr): string(b)}
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func watcher(addr string, id int64) rbd.Watcher { return rbd.Watcher{Addr: addr, ID: id, Cookie: 1} }

// statusJSON is the part of `status -o json` the tests look at.
type statusJSON struct {
	VolumeID string `json:"volumeID"`
	Image    string `json:"image"`
	Owner    struct {
		PVC, Namespace, PV string
	} `json:"owner"`
	Watchers []struct {
		Client, Addr, Node, Note string
		Fenced                   bool
	} `json:"watchers"`
	Attachments []rbd.Attachment `json:"attachments"`
	Fences      []struct {
		ClientAddr string `json:"clientAddr"`
		InForce    bool   `json:"inForce"`
	} `json:"fences"`
	Verdict struct{ State, Text string } `json:"verdict"`
}

func decodeStatus(t *testing.T, out string) statusJSON {
	t.Helper()
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status -o json printed %q: %v", out, err)
	}
	return s
}

func TestStatusVerdict(t *testing.T) {
	inForce, expired := testNow.Add(time.Hour), testNow.Add(-time.Second)
	cases := []struct {
		name      string
		meta      map[string]string
		watchers  []rbd.Watcher
		wantState string
		wantText  []string
	}{
		{name: "free", wantState: "free", wantText: []string{"free"}},
		{name: "attached and mapped",
			meta:      merge(attachRec("node-a"), mapRec("node-a", addrA, 4124)),
			watchers:  []rbd.Watcher{watcher(addrA, 4124)},
			wantState: "attached", wantText: []string{"attached to node-a and mapped there (client.4124 at " + addrA + ")"}},
		{name: "attached, not mapped yet",
			meta: attachRec("node-a"), wantState: "attached", wantText: []string{"attached to node-a, not mapped there yet"}},
		{name: "attached, mapping without a watch",
			meta:      merge(attachRec("node-a"), mapRec("node-a", addrA, 4124)),
			wantState: "attached", wantText: []string{"attached to node-a, but its mapping (client.4124 at " + addrA + ") has no live watch"}},
		{name: "stale",
			meta:      mapRec("node-a", addrA, 4124),
			watchers:  []rbd.Watcher{watcher(addrA, 4124)},
			wantState: "stale",
			wantText: []string{"STALE: node-a still maps it but is not attached — publishing elsewhere will fence client.4124 at " +
				addrA}},
		{name: "unknown watcher",
			watchers:  []rbd.Watcher{watcher(addrB, 77)},
			wantState: "unknown", wantText: []string{"client.77 at " + addrB, "not recorded by any node — mapped outside Pelagic?"}},
		{name: "fenced client still watching",
			meta:      fenceRec("node-a", addrA, 4124, inForce),
			watchers:  []rbd.Watcher{watcher(addrA, 4124)},
			wantState: "fenced",
			wantText:  []string{"FENCED: client.4124 at " + addrA + " (node node-a) is blocklisted until " + inForce.Format(time.RFC3339)}},
		{name: "expired fence does not excuse a watcher",
			meta:      fenceRec("node-a", addrA, 4124, expired),
			watchers:  []rbd.Watcher{watcher(addrA, 4124)},
			wantState: "unknown", wantText: []string{"UNKNOWN HOLDER: client.4124 at " + addrA}},
		{name: "fenced node, volume moved on",
			meta:     merge(fenceRec("node-a", addrA, 4124, inForce), attachRec("node-b"), mapRec("node-b", addrB, 5000)),
			watchers: []rbd.Watcher{watcher(addrB, 5000)}, wantState: "attached",
			wantText: []string{"attached to node-b and mapped there", "client.4124 at " + addrA + " (node node-a) stays fenced until"}},
		{name: "stale wins over a current attachment",
			meta:     merge(mapRec("node-a", addrA, 4124), attachRec("node-b"), mapRec("node-b", addrB, 5000)),
			watchers: []rbd.Watcher{watcher(addrA, 4124), watcher(addrB, 5000)}, wantState: "stale",
			wantText: []string{"STALE: node-a", "attached to node-b and mapped there"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			image, _ := e.addVolume(tc.meta, tc.watchers...)
			code, out, errOut := e.run("status", "rbd/"+image, "-o", "json")
			if code != ctl.ExitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			s := decodeStatus(t, out)
			if s.Verdict.State != tc.wantState {
				t.Errorf("verdict state = %q, want %q (text %q)", s.Verdict.State, tc.wantState, s.Verdict.Text)
			}
			for _, want := range tc.wantText {
				if !strings.Contains(s.Verdict.Text, want) {
					t.Errorf("verdict %q lacks %q", s.Verdict.Text, want)
				}
			}
		})
	}
}

func TestStatusText(t *testing.T) {
	e := newEnv(t)
	image, id := e.addVolume(merge(attachRec("node-a"), mapRec("node-a", addrA, 4124),
		fenceRec("node-c", "10.0.0.9:0/9", 900, testNow.Add(time.Hour))),
		watcher(addrA, 4124), watcher(addrB, 77))
	code, out, errOut := e.run("status", id)
	if code != ctl.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"volume: " + id,
		"image: rbd/" + image,
		"size: 1 GiB",
		"owner: PVC default/data-1, PV pvc-1",
		"client.4124 at " + addrA + " node node-a",
		"client.77 at " + addrB + " not recorded by any node — mapped outside Pelagic?",
		"node-a SINGLE_NODE_WRITER since 2030-01-02T02:04:05Z",
		"node-a client.4124 at " + addrA + " krbd, since 2030-01-02T02:04:05Z, live",
		"node-c client.900 at 10.0.0.9:0/9 at 2030-01-02T03:03:05Z expires 2030-01-02T04:04:05Z (in force)",
		"verdict: UNKNOWN HOLDER: client.77 at " + addrB + " is not recorded by any node", // the worst first
		"; attached to node-a and mapped there (client.4124 at " + addrA + "); client.900 at 10.0.0.9:0/9 (node node-c) stays fenced",
	} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), want) { // wrapped at 120 columns
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

// squash collapses the column padding of text output to single spaces.
func squash(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

func TestStatusFindsTheVolume(t *testing.T) {
	cases := []struct {
		name string
		arg  func(image, id string) string
	}{
		{"by volume ID", func(_, id string) string { return id }},
		{"by POOL/IMAGE", func(image, _ string) string { return "rbd/" + image }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.addVolume(nil) // another volume, so the right one must be picked
			image, id := e.addVolume(attachRec("node-a"))
			code, out, errOut := e.run("status", "-o", "json", tc.arg(image, id))
			if code != ctl.ExitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			s := decodeStatus(t, out)
			if s.Image != image || s.VolumeID != id || len(s.Attachments) != 1 || s.Owner.PVC != "data-2" {
				t.Errorf("status = %+v, want image %s, volume %s, one attachment, PVC data-2", s, image, id)
			}
		})
	}
}

func TestFenceLift(t *testing.T) {
	cases := []struct {
		name        string
		meta        map[string]string
		watchers    []rbd.Watcher
		addr        string
		force       bool
		wantCode    int
		wantErr     string
		wantLifted  bool // the blocklist entry is gone
		wantRecGone bool
	}{
		{name: "recorded fence", meta: fenceRec("node-a", addrA, 4124, testNow.Add(time.Hour)), addr: addrA,
			wantCode: ctl.ExitOK, wantLifted: true, wantRecGone: true},
		{name: "recorded fence, address with msgr prefix", meta: fenceRec("node-a", addrA, 4124, testNow.Add(time.Hour)),
			addr: "v1:" + addrA, wantCode: ctl.ExitOK, wantLifted: true, wantRecGone: true},
		{name: "no record refused", addr: addrA, wantCode: ctl.ExitFailed,
			wantErr: "no fence of " + addrA + " is recorded"},
		{name: "no record forced", addr: addrA, force: true, wantCode: ctl.ExitOK, wantLifted: true},
		{name: "fenced client still watching refused", meta: fenceRec("node-a", addrA, 4124, testNow.Add(time.Hour)),
			watchers: []rbd.Watcher{watcher(addrA, 4124)}, addr: addrA, wantCode: ctl.ExitFailed, wantErr: "still watches"},
		{name: "fenced client whose node still maps it refused",
			meta: merge(fenceRec("node-a", addrA, 4124, testNow.Add(time.Hour)), mapRec("node-a", addrA, 4124)),
			addr: addrA, wantCode: ctl.ExitFailed, wantErr: "node node-a still holds a mapping"},
		{name: "fenced client still watching forced", meta: fenceRec("node-a", addrA, 4124, testNow.Add(time.Hour)),
			watchers: []rbd.Watcher{watcher(addrA, 4124)}, addr: addrA, force: true,
			wantCode: ctl.ExitOK, wantLifted: true, wantRecGone: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			_ = e.cluster.Blocklist(context.Background(), addrA, time.Hour)
			image, id := e.addVolume(tc.meta, tc.watchers...)
			args := []string{"fence", "lift", id, tc.addr}
			if tc.force {
				args = append(args, "--force")
			}
			code, out, errOut := e.run(args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.wantCode, out, errOut)
			}
			if tc.wantErr != "" && !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("stderr %q lacks %q", errOut, tc.wantErr)
			}
			if lifted := !e.cluster.Blocklisted(addrA); lifted != tc.wantLifted {
				t.Errorf("blocklist entry lifted = %t, want %t", lifted, tc.wantLifted)
			}
			_, recorded := e.metadata(image)[rbd.FenceMetadataKey(addrA)]
			if tc.meta != nil && recorded == tc.wantRecGone {
				t.Errorf("fence record still there = %t, want %t", recorded, !tc.wantRecGone)
			}
		})
	}
}

func TestFenceList(t *testing.T) {
	e := newEnv(t)
	imgA, _ := e.addVolume(fenceRec("node-a", addrA, 4124, testNow.Add(time.Hour)))
	e.addVolume(attachRec("node-b"))
	imgC, idC := e.addVolume(fenceRec("node-c", addrB, 77, testNow.Add(-time.Hour)))
	for _, arg := range []string{"rbd", idC} {
		code, out, errOut := e.run("fence", "ls", arg)
		if code != ctl.ExitOK {
			t.Fatalf("fence ls %s: exit %d: %s", arg, code, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "IMAGE") {
			t.Fatalf("fence ls %s printed %d lines, want a header and one per fence:\n%s", arg, len(lines), out)
		}
		for _, want := range []string{imgA[len(imgA)-12:] + " node-a client.4124 " + addrA, "in force",
			imgC[len(imgC)-12:] + " node-c client.77", "expired"} {
			if !strings.Contains(squash(out), want) {
				t.Errorf("fence ls %s lacks %q:\n%s", arg, want, out)
			}
		}
	}
}

func TestList(t *testing.T) {
	e := newEnv(t)
	busy, _ := e.addVolume(merge(attachRec("node-a"), mapRec("node-a", addrA, 4124)), watcher(addrA, 4124))
	idle, _ := e.addVolume(nil)
	// A reservation whose image was never created is an orphan, not fatal.
	if err := e.pool.Reserve(context.Background(), &journal.Record{Kind: journal.Volume, Name: "pvc-half",
		UUID: "00000000-0000-4000-8000-999999999999", Backing: "csi-vol-half"}); err != nil {
		t.Fatal(err)
	}
	e.catalog.Used = map[string]int64{busy: 3 << 20}
	for _, args := range [][]string{{"volumes", "rbd"}, {"ls", "--orphans"}} {
		code, out, errOut := e.run(args...)
		if code != ctl.ExitOK {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		for _, want := range []string{
			"POOL IMAGE NAMESPACE PVC SIZE USED ATTACHED STATE ORIGIN",
			"rbd csi-vol-…" + busy[len(busy)-12:] + " default data-1 1 GiB 3.0 MiB node-a attached pelagic",
			"rbd csi-vol-…" + idle[len(idle)-12:] + " default data-2 1 GiB 0 B - free pelagic",
		} {
			if !strings.Contains(squash(out), want) {
				t.Errorf("%v output lacks %q:\n%s", args, want, out)
			}
		}
		if orphan := strings.Contains(out, "journal rbd/csi-vol-half"); orphan != (args[0] == "ls") {
			t.Errorf("%v lists the half reservation as an orphan: %t\n%s", args, orphan, out)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"ls", "--node", "node-a"}, []string{busy}},
		{[]string{"ls", "--node", "node-b"}, nil},
		{[]string{"ls", "--stale"}, nil},
		{[]string{"ls", "-n", "default"}, []string{busy, idle}},
		{[]string{"ls", "--pool", "rbd", "-n", "other"}, nil},
	} {
		code, out, errOut := e.run(append(tc.args, "-o", "json")...)
		var r struct{ Volumes []struct{ Image string } }
		if code != ctl.ExitOK || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errOut)
		}
		var got []string
		for _, v := range r.Volumes {
			got = append(got, v.Image)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%v = %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	cases := []struct {
		name      string
		keyFile   string // contents; "" for no --keyfile
		env       string // $PELAGIC_KEY
		connErr   bool
		args      []string
		wantCode  int
		wantCreds bool // the connector got testKey
	}{
		{name: "status", keyFile: testKey, args: []string{"status", "rbd/IMAGE"}, wantCode: ctl.ExitOK, wantCreds: true},
		{name: "status json", keyFile: testKey, args: []string{"status", "rbd/IMAGE", "-o", "json"}, wantCode: ctl.ExitOK,
			wantCreds: true},
		{name: "keyring file", keyFile: "[client.admin]\n\tkey = " + testKey + "\n\tcaps mon = \"allow *\"\n",
			args: []string{"status", "rbd/IMAGE"}, wantCode: ctl.ExitOK, wantCreds: true},
		{name: "key from the environment", env: testKey, args: []string{"status", "rbd/IMAGE"}, wantCode: ctl.ExitOK,
			wantCreds: true},
		{name: "connection refused", keyFile: testKey, connErr: true, args: []string{"status", "rbd/IMAGE"},
			wantCode: ctl.ExitFailed, wantCreds: true},
		{name: "key is not base64", keyFile: testKey + "!!", args: []string{"status", "rbd/IMAGE"}, wantCode: ctl.ExitFailed},
		{name: "unknown pool", keyFile: testKey, args: []string{"ls", "--pool", "nope"}, wantCode: ctl.ExitFailed, wantCreds: true},
		{name: "usage error", keyFile: testKey, args: []string{"status"}, wantCode: ctl.ExitUsage},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			image, _ := e.addVolume(attachRec("node-a"))
			if tc.connErr {
				// What ceph.ConnPool returns: it names the user, never the key.
				e.connector.Err = errors.New("connecting to cluster \"c1\" as client.admin: authentication failed")
			}
			e.environ[ctl.KeyEnv] = tc.env
			args := []string{"--config", e.configPath}
			if tc.keyFile != "" {
				args = append(args, "--keyfile", e.writeFile("keyfile", tc.keyFile))
			}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "IMAGE", image))
			}
			code, out, errOut := e.runRaw(args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tc.wantCode, errOut)
			}
			if strings.Contains(out+errOut, testKey[:20]) {
				t.Errorf("the key appears in the output:\nstdout %s\nstderr %s", out, errOut)
			}
			got := len(e.connector.Creds()) == 1 && e.connector.Creds()[0].Key == testKey && e.connector.Creds()[0].ID == "admin"
			if got != tc.wantCreds {
				t.Errorf("connector got admin with the key = %t, want %t", got, tc.wantCreds)
			}
		})
	}
}

func TestCommandLineErrors(t *testing.T) {
	e := newEnv(t)
	_, id := e.addVolume(nil)
	twoClusters := e.writeFile("two.json",
		`[{"clusterID": "c1", "monitors": ["10.0.0.1:6789"]}, {"clusterID": "c2", "monitors": ["10.0.0.2:6789"]}]`)
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, ctl.ExitUsage, "no command"},
		{"help", []string{"-h"}, ctl.ExitOK, ""},
		{"unknown flag", []string{"status", id, "--bogus"}, ctl.ExitUsage, "flag provided but not defined: -bogus"},
		{"unknown command", []string{"frobnicate"}, ctl.ExitUsage, `unknown command "frobnicate"`},
		{"missing volume", []string{"status"}, ctl.ExitUsage, "usage: pelagicctl status VOLUME"},
		{"fence without verb", []string{"fence"}, ctl.ExitUsage, "fence lift VOLUME ADDR"},
		{"pool where an image is needed", []string{"status", "rbd"}, ctl.ExitUsage, "names no image"},
		{"PVC without Kubernetes", []string{"status", "-n", "shop", "data"}, ctl.ExitUsage, "no Kubernetes access"},
		{"malformed volume ID", []string{"status", "0001-zz"}, ctl.ExitUsage, "malformed"},
		{"bad output format", []string{"status", id, "-o", "xml"}, ctl.ExitUsage, "-o must be text, json or yaml"},
		{"flag of another command", []string{"status", id, "--force"}, ctl.ExitUsage, "--force does not apply to status VOLUME"},
		{"several clusters", []string{"ls", "--config", twoClusters}, ctl.ExitUsage, "pass --cluster-id"},
		{"cluster ID contradicts the volume", []string{"status", id, "--cluster-id", "c2", "--config", twoClusters},
			ctl.ExitUsage, `belongs to cluster "c1"`},
		{"unknown cluster ID", []string{"ls", "--cluster-id", "c9"}, ctl.ExitFailed, "unknown cluster"},
		{"no such volume", []string{"status", "rbd/csi-vol-nope"}, ctl.ExitFailed, "image not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := e.run(tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tc.wantCode, tc.wantErr)
			}
		})
	}
	t.Run("no key", func(t *testing.T) {
		code, _, errOut := e.runRaw("status", id, "--config", e.configPath)
		if code != ctl.ExitUsage || !strings.Contains(errOut, ctl.KeyEnv) {
			t.Errorf("exit %d, stderr %q; want a usage error naming %s", code, errOut, ctl.KeyEnv)
		}
	})
}

// TestEveryCallIsBounded: a Ceph call that never answers fails after
// --timeout instead of hanging the operator's shell.
func TestEveryCallIsBounded(t *testing.T) {
	e := newEnv(t)
	image, _ := e.addVolume(nil)
	e.pool.SetHang(true)
	start := time.Now()
	code, _, errOut := e.run("status", "rbd/"+image, "--timeout", "100ms")
	if code != ctl.ExitFailed || !strings.Contains(errOut, "deadline exceeded") {
		t.Errorf("exit %d, stderr %q; want a failure naming the deadline", code, errOut)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("status took %v with --timeout 100ms", took)
	}
}

// TestCephCSIVolumes lists a volume ceph-csi provisioned (in its journal,
// under --instanceid) beside Pelagic's and finds it by its volume ID.
func TestCephCSIVolumes(t *testing.T) {
	e := newEnv(t)
	own, _ := e.addVolume(nil)
	const uuid = "0c7a11e5-0000-4000-8000-00000000c5c1"
	theirs := "csi-vol-" + uuid
	rec := &journal.Record{Kind: journal.Volume, Name: "pvc-from-ceph-csi", UUID: uuid, Backing: theirs}
	if err := e.pool.CephCSI("storage").Reserve(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	e.pool.AddImage(theirs, 2<<30, attachRec("node-b"))
	id := volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID, UUID: uuid}.String()

	code, out, errOut := e.run("ls", "--instanceid", "storage")
	if code != ctl.ExitOK {
		t.Fatalf("ls: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"rbd csi-vol-…" + own[len(own)-12:] + " default data-1 1 GiB 0 B - free pelagic",
		"rbd csi-vol-…" + theirs[len(theirs)-12:] + " - - 2 GiB 0 B node-b attached ceph-csi",
	} {
		if !strings.Contains(squash(out), want) {
			t.Errorf("ls output lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = e.run("status", "--instanceid", "storage", "-o", "json", id)
	if code != ctl.ExitOK {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	if s := decodeStatus(t, out); s.Image != theirs || s.VolumeID != id {
		t.Errorf("status = %+v, want image %s, volume %s", s, theirs, id)
	}
	// Under another instance ID the volume is not ceph-csi's journaled one.
	if code, _, errOut = e.run("status", id); code == ctl.ExitOK || !strings.Contains(errOut, "neither") {
		t.Errorf("status without --instanceid: exit %d, %s; want a failure naming both journals", code, errOut)
	}
}
