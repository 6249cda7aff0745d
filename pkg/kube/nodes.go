// Package kube holds the one thing Pelagic asks of the Kubernetes API:
// whether a CSI node ID belongs to a node this driver runs on.
package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	storageinformers "k8s.io/client-go/informers/storage/v1"
	"k8s.io/client-go/kubernetes"
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

// NewCSINodes watches client's CSINodes for driverName's node IDs once Run runs.
func NewCSINodes(client kubernetes.Interface, driverName string, resync time.Duration) *CSINodes {
	return &CSINodes{informer: storageinformers.NewCSINodeInformer(client, resync, cache.Indexers{
		byDriverNodeID: func(obj any) ([]string, error) { return nodeIDs(obj, driverName), nil },
	})}
}

func nodeIDs(obj any, driverName string) []string {
	n, ok := obj.(*storagev1.CSINode)
	if !ok {
		return nil
	}
	var ids []string
	for _, d := range n.Spec.Drivers {
		if d.Name == driverName && d.NodeID != "" {
			ids = append(ids, d.NodeID)
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
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	nodes := NewCSINodes(client, driverName, 10*time.Minute)
	go nodes.Run(ctx)
	return nodes, nil
}
