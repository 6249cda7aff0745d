package kube

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic/fake"
)

const driverName = "rbd.csi.pelagic.dev"

func csiNode(name string, drivers map[string]string) *storagev1.CSINode {
	n := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for driver, id := range drivers {
		n.Spec.Drivers = append(n.Spec.Drivers, storagev1.CSINodeDriver{Name: driver, NodeID: id})
	}
	return n
}

// unstructuredOf is obj as the dynamic client takes it.
func unstructuredOf(t *testing.T, obj *storagev1.CSINode) *unstructured.Unstructured {
	t.Helper()
	obj.APIVersion, obj.Kind = "storage.k8s.io/v1", "CSINode"
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
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

func TestCSINodes(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := storagev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleDynamicClient(scheme,
		csiNode("worker-1", map[string]string{driverName: "node-1", "other.csi.example": "x-1"}),
		csiNode("worker-2", map[string]string{"other.csi.example": "node-2"}),
	)
	nodes := NewCSINodes(client, driverName, 0)
	if _, err := nodes.HasNode(context.Background(), "node-1"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("HasNode before the cache synced = %v, want ErrNotSynced", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go nodes.Run(ctx)

	eventually(t, nodes, "node-1", true)
	for _, id := range []string{"node-2", "x-1", "worker-1", ""} {
		if ok, err := nodes.HasNode(ctx, id); ok || err != nil {
			t.Errorf("HasNode(%q) = %v, %v; want false: no CSINode holds it for %s", id, ok, err, driverName)
		}
	}

	// Answers come from the cache: no call reaches the API server.
	before := len(client.Actions())
	for range 100 {
		_, _ = nodes.HasNode(ctx, "node-1")
	}
	if after := len(client.Actions()); after != before {
		t.Errorf("HasNode made %d API calls", after-before)
	}

	// A node plugin registering later, and a node going away, are seen.
	nodesAPI := client.Resource(csiNodes)
	if _, err := nodesAPI.Create(ctx, unstructuredOf(t, csiNode("worker-3", map[string]string{driverName: "node-3"})), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, nodes, "node-3", true)
	if err := nodesAPI.Delete(ctx, "worker-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, nodes, "node-1", false)
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

func TestRESTConfig(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if cfg, err := RESTConfig(""); cfg != nil || err != nil {
		t.Errorf("outside a cluster without a kubeconfig: %v, %v; want neither", cfg, err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := RESTConfig(path)
	if err != nil || cfg.Host != "https://127.0.0.1:6443" {
		t.Errorf("RESTConfig(%s) = %v, %v", path, cfg, err)
	}
	if _, err := RESTConfig(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing kubeconfig is not an error")
	}
}
