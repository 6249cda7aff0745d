// Package kube holds the one thing Pelagic asks of the Kubernetes API:
// whether a CSI node ID belongs to a node this driver runs on. It lists and
// watches CSINodes over HTTPS itself: client-go's REST machinery made up a
// quarter of the driver's code, and of its memory, for one resource.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// NodeChecker tells whether a CSI node ID names a node of this driver.
type NodeChecker interface {
	// HasNode reports whether some node registered nodeID for this
	// driver. An error means it cannot tell.
	HasNode(ctx context.Context, nodeID string) (bool, error)
}

// ErrNotSynced: the cache has not yet listed the cluster's CSINodes.
var ErrNotSynced = errors.New("the CSINode cache has not synced with the API server yet (the controller needs get, list and watch on storage.k8s.io csinodes)")

const csiNodesPath = "/apis/storage.k8s.io/v1/csinodes"

// watchTimeout is how long one watch lasts before the CSINodes are listed
// again; the API server ends it then.
const watchTimeout = 5 * time.Minute

// CSINodes is a NodeChecker answering from a cache of the cluster's
// CSINodes, kept by Run.
type CSINodes struct {
	api    *apiServer
	driver string

	mu     sync.Mutex
	synced bool
	ids    map[string][]string // CSINode name -> the node IDs it holds for driver
}

var _ NodeChecker = (*CSINodes)(nil)

// csiNode is the part of a CSINode the driver reads.
type csiNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Drivers []struct {
			Name   string `json:"name"`
			NodeID string `json:"nodeID"`
		} `json:"drivers"`
	} `json:"spec"`
}

// nodeIDs returns the node IDs n holds for driver.
func (n *csiNode) nodeIDs(driver string) []string {
	var ids []string
	for _, d := range n.Spec.Drivers {
		if d.Name == driver && d.NodeID != "" {
			ids = append(ids, d.NodeID)
		}
	}
	return ids
}

// HasNode implements NodeChecker from the cache.
func (c *CSINodes) HasNode(_ context.Context, nodeID string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return false, ErrNotSynced
	}
	for _, ids := range c.ids {
		if slices.Contains(ids, nodeID) {
			return true, nil
		}
	}
	return false, nil
}

// Run lists and watches the CSINodes until ctx ends, listing again when a
// watch ends and backing off while the API server fails.
func (c *CSINodes) Run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		version, err := c.list(ctx)
		if err == nil {
			backoff = time.Second
			err = c.watch(ctx, version)
		}
		if err == nil || ctx.Err() != nil {
			continue
		}
		klog.FromContext(ctx).Error(err, "watching CSINodes; trying again", "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// list replaces the cache with the CSINodes as they are, and returns the
// list's resource version.
func (c *CSINodes) list(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	body, err := c.api.get(ctx, csiNodesPath, nil)
	if err != nil {
		return "", fmt.Errorf("listing CSINodes: %w", err)
	}
	defer body.Close()
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []csiNode `json:"items"`
	}
	if err := json.NewDecoder(body).Decode(&list); err != nil {
		return "", fmt.Errorf("listing CSINodes: %w", err)
	}
	ids := map[string][]string{}
	for i := range list.Items {
		ids[list.Items[i].Metadata.Name] = list.Items[i].nodeIDs(c.driver)
	}
	c.mu.Lock()
	c.ids, c.synced = ids, true
	c.mu.Unlock()
	return list.Metadata.ResourceVersion, nil
}

// watchEvent is one line of a watch.
type watchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// watch applies the changes since version until the watch ends: nil when
// the API server ended it or asked for a new list (an ERROR event, such as
// 410 Gone for a version too old).
func (c *CSINodes) watch(ctx context.Context, version string) error {
	ctx, cancel := context.WithTimeout(ctx, watchTimeout+time.Minute)
	defer cancel()
	query := url.Values{"watch": {"true"}, "resourceVersion": {version}, "allowWatchBookmarks": {"true"},
		"timeoutSeconds": {strconv.Itoa(int(watchTimeout.Seconds()))}}
	body, err := c.api.get(ctx, csiNodesPath, query)
	if err != nil {
		return fmt.Errorf("watching CSINodes: %w", err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("watching CSINodes: %w", err)
		}
		if ev.Type == "ERROR" {
			return nil
		}
		c.apply(ev)
	}
}

// apply changes the cache by one watch event.
func (c *CSINodes) apply(ev watchEvent) {
	var n csiNode
	if ev.Type == "BOOKMARK" || json.Unmarshal(ev.Object, &n) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch ev.Type {
	case "ADDED", "MODIFIED":
		c.ids[n.Metadata.Name] = n.nodeIDs(c.driver)
	case "DELETED":
		delete(c.ids, n.Metadata.Name)
	}
}

// WatchCSINodes returns a NodeChecker over the cluster that kubeconfig (or
// the in-cluster service account) reaches, watching until ctx ends; nil
// when there is no Kubernetes access.
func WatchCSINodes(ctx context.Context, kubeconfig, driverName string) (NodeChecker, error) {
	api, err := findAPIServer(kubeconfig)
	if err != nil || api == nil {
		return nil, err
	}
	nodes := &CSINodes{api: api, driver: driverName}
	go nodes.Run(ctx)
	return nodes, nil
}
