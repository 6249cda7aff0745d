package kube

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const driverName = "rbd.csi.pelagic.dev"

// fakeAPI plays the API server's CSINode list and watch over TLS, as the
// real one answers them (a list with its resource version; a watch of
// one JSON event after another), and checks the bearer token.
type fakeAPI struct {
	t      *testing.T
	srv    *httptest.Server
	token  string
	mu     sync.Mutex
	nodes  map[string]map[string]string // CSINode name -> driver -> node ID
	events chan string                  // watch events to send, as JSON
	asked  chan struct{}                // closed at the first request
	once   sync.Once
}

func newFakeAPI(t *testing.T, token string) *fakeAPI {
	f := &fakeAPI{t: t, token: token, nodes: map[string]map[string]string{}, events: make(chan string, 16),
		asked: make(chan struct{})}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func csiNodeJSON(name string, drivers map[string]string) string {
	var ds []string
	for d, id := range drivers {
		ds = append(ds, fmt.Sprintf(`{"name":%q,"nodeID":%q,"topologyKeys":null}`, d, id))
	}
	return fmt.Sprintf(`{"kind":"CSINode","apiVersion":"storage.k8s.io/v1","metadata":{"name":%q,"resourceVersion":"7"},"spec":{"drivers":[%s]}}`,
		name, strings.Join(ds, ","))
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.once.Do(func() { close(f.asked) })
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		http.Error(w, `{"kind":"Status","code":401}`, http.StatusUnauthorized)
		return
	}
	if r.URL.Path != csiNodesPath {
		http.NotFound(w, r)
		return
	}
	if r.URL.Query().Get("watch") != "true" {
		f.mu.Lock()
		var items []string
		for name, drivers := range f.nodes {
			items = append(items, csiNodeJSON(name, drivers))
		}
		f.mu.Unlock()
		fmt.Fprintf(w, `{"kind":"CSINodeList","apiVersion":"storage.k8s.io/v1","metadata":{"resourceVersion":"42"},"items":[%s]}`,
			strings.Join(items, ","))
		return
	}
	if r.URL.Query().Get("resourceVersion") != "42" {
		f.t.Errorf("watch from version %q, not the list's", r.URL.Query().Get("resourceVersion"))
	}
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-f.events:
			fmt.Fprintln(w, ev)
			w.(http.Flusher).Flush()
			if strings.Contains(ev, `"ERROR"`) {
				return
			}
		}
	}
}

func (f *fakeAPI) set(name string, drivers map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[name] = drivers
}

// kubeconfig writes a kubeconfig for the fake server, with the token.
func (f *fakeAPI) kubeconfig(t *testing.T, token string) string {
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	path := filepath.Join(t.TempDir(), "kubeconfig")
	err := os.WriteFile(path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: %q, certificate-authority-data: %s}
users: [{name: u, user: {token: %q}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, f.srv.URL, base64.StdEncoding.EncodeToString(ca), token)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// eventually polls HasNode until it answers want.
func eventually(t *testing.T, c NodeChecker, id string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.HasNode(context.Background(), id)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("HasNode(%q) = %v, %v; want %v", id, got, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCSINodes: the cache lists the CSINodes through a kubeconfig's
// server and token, answers only for this driver's node IDs, follows the
// watch (a node registering, a node going away) and lists again when the
// API server ends the watch with an ERROR event (410 Gone).
func TestCSINodes(t *testing.T) {
	api := newFakeAPI(t, "the-token")
	api.set("worker-1", map[string]string{driverName: "node-1", "other.csi.example": "x-1"})
	api.set("worker-2", map[string]string{"other.csi.example": "node-2"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodes, err := WatchCSINodes(ctx, api.kubeconfig(t, "the-token"), driverName)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, nodes, "node-1", true)
	for _, id := range []string{"node-2", "x-1", "worker-1", ""} {
		if ok, err := nodes.HasNode(ctx, id); ok || err != nil {
			t.Errorf("HasNode(%q) = %v, %v; want false: no CSINode holds it for %s", id, ok, err, driverName)
		}
	}

	api.events <- `{"type":"ADDED","object":` + csiNodeJSON("worker-3", map[string]string{driverName: "node-3"}) + `}`
	eventually(t, nodes, "node-3", true)
	api.events <- `{"type":"BOOKMARK","object":{"kind":"CSINode","metadata":{"resourceVersion":"50"}}}`
	api.events <- `{"type":"DELETED","object":` + csiNodeJSON("worker-1", map[string]string{driverName: "node-1"}) + `}`
	eventually(t, nodes, "node-1", false)

	api.set("worker-4", map[string]string{driverName: "node-4"})
	api.events <- `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}`
	eventually(t, nodes, "node-4", true)
}

// TestCSINodesNotSynced: until a list succeeds (here the token is
// refused) HasNode cannot tell.
func TestCSINodesNotSynced(t *testing.T) {
	api := newFakeAPI(t, "the-token")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodes, err := WatchCSINodes(ctx, api.kubeconfig(t, "a-wrong-token"), driverName)
	if err != nil {
		t.Fatal(err)
	}
	<-api.asked // the first list, refused
	if _, err := nodes.HasNode(ctx, "node-1"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("HasNode with the token refused = %v, want ErrNotSynced", err)
	}
}

// TestInCluster: a pod's service account (token re-read for each request)
// reaches the API server; outside a pod there is no access, and no error.
func TestInCluster(t *testing.T) {
	if api, err := inCluster(func(string) string { return "" }, t.TempDir()); api != nil || err != nil {
		t.Errorf("outside a pod: %v, %v; want neither", api, err)
	}
	fake := newFakeAPI(t, "first")
	fake.set("worker-1", map[string]string{driverName: "node-1"})
	dir := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fake.srv.Certificate().Raw})
	writeFile(t, filepath.Join(dir, "ca.crt"), string(ca))
	writeFile(t, filepath.Join(dir, "token"), "first\n")
	host, port, _ := strings.Cut(strings.TrimPrefix(fake.srv.URL, "https://"), ":")
	env := map[string]string{"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
	api, err := inCluster(func(k string) string { return env[k] }, dir)
	if err != nil {
		t.Fatal(err)
	}
	nodes := &CSINodes{api: api, driver: driverName}
	if _, err := nodes.list(context.Background()); err != nil {
		t.Fatal(err)
	}
	fake.token = "rotated"
	writeFile(t, filepath.Join(dir, "token"), "rotated\n")
	if _, err := nodes.list(context.Background()); err != nil {
		t.Fatalf("after the token rotated: %v", err)
	}
}

// TestKubeconfig: what a kubeconfig may hold, and what it may not.
func TestKubeconfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "kubeconfig")
		writeFile(t, p, "apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"+body)
		return p
	}
	tests := []struct {
		name, body, wantErr string
	}{
		{"token, no CA", "clusters: [{name: c, cluster: {server: \"https://127.0.0.1:6443\"}}]\nusers: [{name: u, user: {token: t}}]\n", ""},
		{"token file", "clusters: [{name: c, cluster: {server: \"https://127.0.0.1:6443/\"}}]\nusers: [{name: u, user: {tokenFile: tok}}]\n", ""},
		{"exec plugin", "clusters: [{name: c, cluster: {server: \"https://127.0.0.1:6443\"}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\n", "not supported"},
		{"plain http", "clusters: [{name: c, cluster: {server: \"http://127.0.0.1:8080\"}}]\nusers: [{name: u, user: {token: t}}]\n", "not https"},
		{"no cluster", "clusters: []\nusers: []\n", "no cluster"},
		{"bad CA", "clusters: [{name: c, cluster: {server: \"https://h:1\", certificate-authority-data: bm90IGEgY2VydA==}}]\nusers: []\n", "no certificate"},
	}
	writeFile(t, filepath.Join(dir, "tok"), "from-file\n")
	for _, tt := range tests {
		api, err := fromKubeconfig(write(tt.body))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: %v, want an error saying %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || api.base != "https://127.0.0.1:6443" {
			t.Errorf("%s: %+v, %v", tt.name, api, err)
			continue
		}
		if tok, err := api.token(); err != nil || (tok != "t" && tok != "from-file") {
			t.Errorf("%s: token %q, %v", tt.name, tok, err)
		}
	}
	if _, err := fromKubeconfig(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing kubeconfig is not an error")
	}
}

func TestFakeNodes(t *testing.T) {
	f := NewFakeNodes("a")
	f.Add("b")
	for id, want := range map[string]bool{"a": true, "b": true, "c": false} {
		if got, err := f.HasNode(context.Background(), id); got != want || err != nil {
			t.Errorf("HasNode(%q) = %v, %v", id, got, err)
		}
	}
	f.Err = errors.New("down")
	if _, err := f.HasNode(context.Background(), "a"); err == nil {
		t.Error("Err is not returned")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
