package ctl

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeView is what pelagicctl reads of Kubernetes: PVCs, PVs, pods,
// nodes, VolumeAttachments, CSINodes and events. Every call is bounded by
// --timeout; lists are paged.
type kubeView struct {
	c       kubernetes.Interface
	options *options
}

// kubeView finds Kubernetes access: the Tool's client, --kubeconfig,
// $KUBECONFIG, or the in-cluster config. Without any it returns nil and
// says what that means.
func (t Tool) kubeView(o *options) (*kubeView, string) {
	if t.Kube != nil {
		return &kubeView{c: t.Kube, options: o}, ""
	}
	cfg, err := restConfig(o.kubeconfig, t.getenv("KUBECONFIG"))
	if err == nil && cfg == nil {
		return nil, "no Kubernetes access (no --kubeconfig, $KUBECONFIG or in-cluster config): " +
			"PVCs, pods, nodes and VolumeAttachments are not shown"
	}
	if err != nil {
		return nil, fmt.Sprintf("no Kubernetes access: %v", err)
	}
	cfg.Timeout = o.timeout
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Sprintf("no Kubernetes access: %v", err)
	}
	return &kubeView{c: c, options: o}, ""
}

// restConfig loads the kubeconfig named by the flag, else by $KUBECONFIG
// (a list of files, as kubectl reads it), else the in-cluster config;
// nil when there is none of them.
func restConfig(flagPath, env string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: flagPath}
	if flagPath == "" {
		if env == "" {
			cfg, err := rest.InClusterConfig()
			if err == rest.ErrNotInCluster {
				return nil, nil
			}
			return cfg, err
		}
		rules.Precedence = filepath.SplitList(env)
	}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}

func (k *kubeView) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, k.options.timeout)
}

func (k *kubeView) pvc(ctx context.Context, ns, name string) (*corev1.PersistentVolumeClaim, error) {
	ctx, cancel := k.bounded(ctx)
	defer cancel()
	return k.c.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
}

func (k *kubeView) pv(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	ctx, cancel := k.bounded(ctx)
	defer cancel()
	return k.c.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
}

const kubePage = 500

// pvs lists every PV, a page at a time.
func (k *kubeView) pvs(ctx context.Context) ([]corev1.PersistentVolume, error) {
	var out []corev1.PersistentVolume
	opts := metav1.ListOptions{Limit: kubePage}
	for {
		lctx, cancel := k.bounded(ctx)
		l, err := k.c.CoreV1().PersistentVolumes().List(lctx, opts)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing PVs: %w", err)
		}
		out = append(out, l.Items...)
		if opts.Continue = l.Continue; opts.Continue == "" {
			return out, nil
		}
	}
}

// pvByHandle finds the CSI PV whose volume handle is id; nil when none.
func (k *kubeView) pvByHandle(ctx context.Context, id string) (*corev1.PersistentVolume, error) {
	all, err := k.pvs(ctx)
	if err != nil {
		return nil, err
	}
	for i := range all {
		if c := all[i].Spec.CSI; c != nil && c.VolumeHandle == id {
			return &all[i], nil
		}
	}
	return nil, nil
}

// podsUsing lists the pods of ns that mount the claim.
func (k *kubeView) podsUsing(ctx context.Context, ns, claim string) ([]corev1.Pod, error) {
	var out []corev1.Pod
	opts := metav1.ListOptions{Limit: kubePage}
	for {
		lctx, cancel := k.bounded(ctx)
		l, err := k.c.CoreV1().Pods(ns).List(lctx, opts)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing the pods of %s: %w", ns, err)
		}
		for _, p := range l.Items {
			for _, v := range p.Spec.Volumes {
				if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
					out = append(out, p)
					break
				}
			}
		}
		if opts.Continue = l.Continue; opts.Continue == "" {
			sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
			return out, nil
		}
	}
}

// attachments lists the VolumeAttachments of the PV.
func (k *kubeView) attachments(ctx context.Context, pv string) ([]storagev1.VolumeAttachment, error) {
	ctx, cancel := k.bounded(ctx)
	defer cancel()
	l, err := k.c.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing VolumeAttachments: %w", err)
	}
	var out []storagev1.VolumeAttachment
	for _, va := range l.Items {
		if n := va.Spec.Source.PersistentVolumeName; n != nil && *n == pv {
			out = append(out, va)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.NodeName < out[j].Spec.NodeName })
	return out, nil
}

// node reads a node; nil, nil when it does not exist.
func (k *kubeView) node(ctx context.Context, name string) (*corev1.Node, error) {
	ctx, cancel := k.bounded(ctx)
	defer cancel()
	n, err := k.c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return n, err
}

// nodeNames maps the CSI node IDs the drivers registered (CSINode) to
// node names; a node ID no CSINode lists is taken as the node's name.
func (k *kubeView) nodeNames(ctx context.Context) map[string]string {
	ctx, cancel := k.bounded(ctx)
	defer cancel()
	out := map[string]string{}
	l, err := k.c.StorageV1().CSINodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, n := range l.Items {
		for _, d := range n.Spec.Drivers {
			if strings.Contains(d.Name, "pelagic") || strings.HasSuffix(d.Name, ".csi.ceph.com") {
				out[d.NodeID] = n.Name
			}
		}
	}
	return out
}

// warnings lists the pod's Warning events, newest last.
func (k *kubeView) warnings(ctx context.Context, pod *corev1.Pod) []corev1.Event {
	ctx, cancel := k.bounded(ctx)
	defer cancel()
	l, err := k.c.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	var out []corev1.Event
	for _, e := range l.Items {
		if e.Type == corev1.EventTypeWarning && e.InvolvedObject.Kind == "Pod" && e.InvolvedObject.Name == pod.Name {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return eventTime(out[i]).Time.Before(eventTime(out[j]).Time) })
	return out
}

func eventTime(e corev1.Event) metav1.Time {
	if !e.LastTimestamp.IsZero() {
		return e.LastTimestamp
	}
	if !e.EventTime.IsZero() {
		return metav1.NewTime(e.EventTime.Time)
	}
	return e.FirstTimestamp
}
