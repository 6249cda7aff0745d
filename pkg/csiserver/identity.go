package csiserver

import (
	"context"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

// Prober reports whether the driver can reach its backend.
type Prober interface {
	Probe(ctx context.Context) error
}

// IdentityOptions configure the Identity service.
type IdentityOptions struct {
	Name          string
	Version       string
	Controller    bool // advertise CONTROLLER_SERVICE
	Expansion     bool // advertise online volume expansion
	Topology      bool // advertise VOLUME_ACCESSIBILITY_CONSTRAINTS
	Prober        Prober
	ProbeTimeout  time.Duration // deadline of one backend probe
	ProbeCacheFor time.Duration // how long a probe result is reused
}

// Identity implements csi.IdentityServer.
type Identity struct {
	csi.UnimplementedIdentityServer
	opts IdentityOptions

	mu        sync.Mutex
	lastProbe time.Time
	lastReady bool
}

// NewIdentity returns the Identity service.
func NewIdentity(opts IdentityOptions) *Identity {
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 5 * time.Second
	}
	if opts.ProbeCacheFor == 0 {
		opts.ProbeCacheFor = 5 * time.Second
	}
	return &Identity{opts: opts}
}

// GetPluginInfo returns the driver name and version.
func (s *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.opts.Name, VendorVersion: s.opts.Version}, nil
}

// GetPluginCapabilities advertises the controller service and expansion.
func (s *Identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	var caps []*csi.PluginCapability
	service := func(t csi.PluginCapability_Service_Type) {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{
			Service: &csi.PluginCapability_Service{Type: t}}})
	}
	if s.opts.Controller {
		service(csi.PluginCapability_Service_CONTROLLER_SERVICE)
	}
	if s.opts.Topology {
		service(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)
	}
	if s.opts.Expansion {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{
			VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe reports ready only when the backend answered recently. The result
// is cached briefly so liveness probes do not load the monitors.
func (s *Identity) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if s.opts.Prober == nil {
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.lastProbe) < s.opts.ProbeCacheFor {
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(s.lastReady)}, nil
	}
	pctx, cancel := context.WithTimeout(ctx, s.opts.ProbeTimeout)
	defer cancel()
	err := s.opts.Prober.Probe(pctx)
	if err != nil {
		klog.FromContext(ctx).Error(err, "probe failed")
	}
	s.lastProbe, s.lastReady = time.Now(), err == nil
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(s.lastReady)}, nil
}
