// Package kube holds the one thing Pelagic asks of the Kubernetes API:
// whether a CSI node ID belongs to a node this driver runs on.
package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// NodeChecker tells whether a CSI node ID names a node of this driver.
type NodeChecker interface {
	// HasNode reports whether some node registered nodeID for this
	// driver. An error means it cannot tell.
	HasNode(ctx context.Context, nodeID string) (bool, error)
}

// ErrNotSynced: the cache has not yet listed the cluster's CSINodes.
var ErrNotSynced = errors.New("the CSINode cache has not synced with the API server yet (the controller needs get, list and watch on storage.k8s.io csinodes)")

// byDriverNodeID indexes CSINodes by the node IDs they hold for the driver.
const byDriverNodeID = "driverNodeID"

// CSINodes answers from the CSINode objects kubelet writes when a node
// plugin registers: each lists its node's drivers with their node IDs.
// An informer watches them and keeps them cached, so HasNode costs no
// API request.
type CSINodes struct {
	informer cache.SharedIndexInformer
}

var _ NodeChecker = (*CSINodes)(nil)

// csiNodes is the resource the node plugins register their node IDs in.
var csiNodes = schema.GroupVersionResource{Group: "storage.k8s.io", Version: "v1", Resource: "csinodes"}

// NewCSINodes watches client's CSINodes for driverName's node IDs once Run
// runs. It reads them as unstructured objects through the dynamic client:
// the typed clients bring every Kubernetes API type into the binary, which
// made the driver a fifth larger, in its file and in its memory, for two
// fields.
func NewCSINodes(client dynamic.Interface, driverName string, resync time.Duration) *CSINodes {
	api := client.Resource(csiNodes)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return api.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return api.Watch(ctx, opts)
		},
	}
	// A fake client cannot stream a list: the wrapper tells the reflector.
	watcher := cache.ToListWatcherWithWatchListSemantics(lw, client)
	return &CSINodes{informer: cache.NewSharedIndexInformer(watcher, &unstructured.Unstructured{}, resync, cache.Indexers{
		byDriverNodeID: func(obj any) ([]string, error) { return nodeIDs(obj, driverName), nil },
	})}
}

// nodeIDs returns the node IDs a CSINode holds for driverName
// (spec.drivers[].name and .nodeID).
func nodeIDs(obj any, driverName string) []string {
	n, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil
	}
	drivers, _, _ := unstructured.NestedSlice(n.Object, "spec", "drivers")
	var ids []string
	for _, d := range drivers {
		d, _ := d.(map[string]any)
		name, _ := d["name"].(string)
		id, _ := d["nodeID"].(string)
		if name == driverName && id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// Run watches until ctx ends.
func (c *CSINodes) Run(ctx context.Context) { c.informer.RunWithContext(ctx) }

// HasNode implements NodeChecker from the cache.
func (c *CSINodes) HasNode(_ context.Context, nodeID string) (bool, error) {
	if !c.informer.HasSynced() {
		return false, ErrNotSynced
	}
	objs, err := c.informer.GetIndexer().ByIndex(byDriverNodeID, nodeID)
	return len(objs) > 0, err
}

// RESTConfig finds Kubernetes access: the kubeconfig file when one is
// named, else the pod's in-cluster config; nil, and no error, when there
// is neither.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) {
		return nil, nil
	}
	return cfg, err
}

// WatchCSINodes returns a NodeChecker over the cluster that kubeconfig (or
// the in-cluster config) reaches, watching until ctx ends; nil when there
// is no Kubernetes access.
func WatchCSINodes(ctx context.Context, kubeconfig, driverName string) (NodeChecker, error) {
	cfg, err := RESTConfig(kubeconfig)
	if err != nil || cfg == nil {
		return nil, err
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	nodes := NewCSINodes(client, driverName, 10*time.Minute)
	go nodes.Run(ctx)
	return nodes, nil
}
