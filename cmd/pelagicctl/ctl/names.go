package ctl

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Kinds of volume.
const (
	kindRBD    = "rbd"
	kindCephFS = "cephfs"
)

// volumeRef is what a VOLUME argument names, in Kubernetes and in Ceph.
type volumeRef struct {
	Arg      string `json:"-"`
	VolumeID string `json:"volumeID,omitempty"`
	Kind     string `json:"-"`
	// RBD: the pool and image, when given as POOL/IMAGE or by the PV.
	Pool  string `json:"-"`
	Image string `json:"-"`
	// CephFS: the filesystem and subvolume the PV names.
	FS        string `json:"-"`
	Subvolume string `json:"-"`
	// The PVC (namespace/name) and PV, when Kubernetes knows them.
	PVC string                   `json:"-"`
	PV  *corev1.PersistentVolume `json:"-"`
	// Notes say what could not be resolved, and why.
	Notes []string `json:"-"`
}

func (r *volumeRef) note(format string, a ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, a...))
}

// resolveNames turns a VOLUME argument into a volume ID (or POOL/IMAGE)
// through Kubernetes: PVC NS/NAME (or NAME with -n), PV NAME, a CSI volume
// ID (whose PV and PVC it looks up), or POOL/IMAGE.
func (s *session) resolveNames(ctx context.Context, arg string) (*volumeRef, error) {
	ref := &volumeRef{Arg: arg}
	if _, ok := volumeIDOf(arg); ok {
		ref.VolumeID = arg
		if s.kube == nil {
			ref.note("%s", s.kubeNote)
			return ref, nil
		}
		pv, err := s.kube.pvByHandle(ctx, arg)
		if err != nil {
			ref.note("looking up the PV of %s: %v", arg, err)
		} else if pv == nil {
			ref.note("no PV has volume handle %s: statically provisioned elsewhere, or its PV is gone", arg)
		} else {
			s.fromPV(ctx, ref, pv)
		}
		return ref, nil
	}
	if strings.HasPrefix(arg, "0001-") {
		return nil, usagef("%q looks like a CSI volume ID but is malformed", arg)
	}
	first, second, slash := strings.Cut(arg, "/")
	switch {
	case first == "" || (slash && (second == "" || strings.Contains(second, "/"))):
		return nil, usagef("%q is neither a PVC (NAMESPACE/NAME), a PV, a CSI volume ID (0001-...) nor POOL/IMAGE", arg)
	case slash:
		return s.resolveSlashed(ctx, ref, first, second)
	case s.opts.namespace != "":
		return s.resolvePVC(ctx, ref, s.opts.namespace, arg)
	}
	if s.kube == nil {
		return nil, usagef("%q names no image: give POOL/IMAGE or a CSI volume ID (0001-...); "+
			"a PV or PVC name needs Kubernetes access (--kubeconfig)", arg)
	}
	pv, err := s.kube.pv(ctx, arg)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("no PV %q; for a PVC pass NAMESPACE/NAME or -n NAMESPACE", arg)
	}
	if err != nil {
		return nil, fmt.Errorf("reading PV %s: %w", arg, err)
	}
	return ref, s.fromPV(ctx, ref, pv)
}

// resolveSlashed reads A/B as a PVC when Kubernetes has one, else as
// POOL/IMAGE.
func (s *session) resolveSlashed(ctx context.Context, ref *volumeRef, first, second string) (*volumeRef, error) {
	if s.kube == nil {
		ref.Pool, ref.Image, ref.Kind = first, second, kindRBD
		ref.note("%s; %s/%s taken as POOL/IMAGE", s.kubeNote, first, second)
		return ref, nil
	}
	pvc, err := s.kube.pvc(ctx, first, second)
	if apierrors.IsNotFound(err) {
		ref.Pool, ref.Image, ref.Kind = first, second, kindRBD
		return ref, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading PVC %s/%s: %w", first, second, err)
	}
	return ref, s.fromPVC(ctx, ref, pvc)
}

func (s *session) resolvePVC(ctx context.Context, ref *volumeRef, ns, name string) (*volumeRef, error) {
	if s.kube == nil {
		return nil, usagef("PVC %s/%s: %s; give a CSI volume ID or POOL/IMAGE instead", ns, name, s.kubeNote)
	}
	pvc, err := s.kube.pvc(ctx, ns, name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("no PVC %s/%s", ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading PVC %s/%s: %w", ns, name, err)
	}
	return ref, s.fromPVC(ctx, ref, pvc)
}

func (s *session) fromPVC(ctx context.Context, ref *volumeRef, pvc *corev1.PersistentVolumeClaim) error {
	ref.PVC = pvc.Namespace + "/" + pvc.Name
	if pvc.Spec.VolumeName == "" {
		return fmt.Errorf("PVC %s is not bound (phase %s): it has no volume yet; see kubectl describe pvc -n %s %s",
			ref.PVC, pvc.Status.Phase, pvc.Namespace, pvc.Name)
	}
	pv, err := s.kube.pv(ctx, pvc.Spec.VolumeName)
	if err != nil {
		return fmt.Errorf("PVC %s is bound to PV %s, which cannot be read: %w", ref.PVC, pvc.Spec.VolumeName, err)
	}
	return s.fromPV(ctx, ref, pv)
}

// fromPV takes the volume handle, driver and attributes of a CSI PV.
func (s *session) fromPV(_ context.Context, ref *volumeRef, pv *corev1.PersistentVolume) error {
	ref.PV = pv
	if c := pv.Spec.ClaimRef; c != nil && ref.PVC == "" {
		ref.PVC = c.Namespace + "/" + c.Name
	}
	c := pv.Spec.CSI
	if c == nil {
		return fmt.Errorf("PV %s is not a CSI volume", pv.Name)
	}
	ref.VolumeID = c.VolumeHandle
	ref.Kind = kindRBD
	if strings.Contains(c.Driver, "cephfs") {
		ref.Kind = kindCephFS
		ref.FS, ref.Subvolume = c.VolumeAttributes["fsName"], c.VolumeAttributes["subvolumeName"]
		return nil
	}
	ref.Pool, ref.Image = c.VolumeAttributes["pool"], c.VolumeAttributes["imageName"]
	return nil
}
