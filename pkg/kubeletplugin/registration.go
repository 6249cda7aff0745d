// Package kubeletplugin serves what a node plugin offers the kubelet besides
// CSI itself: plugin registration, so no node-driver-registrar sidecar is
// needed, and a /healthz endpoint for liveness probes.
package kubeletplugin

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/pelagic-csi/pelagic/pkg/csiserver"
)

// csiVersions are the CSI versions the kubelet may speak to the driver.
var csiVersions = []string{"1.0.0"}

// RegistrationOptions describe a CSI driver to the kubelet.
type RegistrationOptions struct {
	DriverName string
	// Endpoint is the path of the driver's CSI socket as the kubelet sees it.
	Endpoint string
	// Dir is the kubelet's plugin registration directory
	// (<kubelet root>/plugins_registry), watched by the kubelet.
	Dir string
}

// Registration answers the kubelet's plugin watcher: the kubelet finds the
// socket in its registration directory, asks GetInfo for the driver's name
// and endpoint, and reports the outcome with NotifyRegistrationStatus.
type Registration struct {
	registerapi.UnimplementedRegistrationServer
	opts RegistrationOptions

	mu         sync.Mutex
	registered bool
	lastError  string
}

// NewRegistration returns the registration service for one driver.
func NewRegistration(o RegistrationOptions) *Registration {
	return &Registration{opts: o}
}

// SocketPath is where the kubelet looks for the driver: the same name
// node-driver-registrar uses, so the two can replace each other.
func (r *Registration) SocketPath() string {
	return filepath.Join(r.opts.Dir, r.opts.DriverName+"-reg.sock")
}

// GetInfo tells the kubelet what the plugin is and where its CSI socket is.
func (r *Registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.opts.DriverName,
		Endpoint:          r.opts.Endpoint,
		SupportedVersions: csiVersions,
	}, nil
}

// NotifyRegistrationStatus records and logs the kubelet's verdict.
func (r *Registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	r.mu.Lock()
	r.registered, r.lastError = s.GetPluginRegistered(), s.GetError()
	r.mu.Unlock()
	if s.GetPluginRegistered() {
		klog.InfoS("registered with the kubelet", "driver", r.opts.DriverName, "endpoint", r.opts.Endpoint)
	} else {
		klog.ErrorS(nil, "the kubelet refused the registration", "driver", r.opts.DriverName, "reason", s.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Status is the kubelet's last verdict: registered, or why not ("" before
// the kubelet has answered).
func (r *Registration) Status() (registered bool, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered, r.lastError
}

// Serve serves the registration socket until ctx ends, then removes it, so
// the kubelet sees the plugin go away.
func (r *Registration) Serve(ctx context.Context) error {
	lis, err := csiserver.Listen("unix://" + r.SocketPath())
	if err != nil {
		return fmt.Errorf("registration socket: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	klog.InfoS("serving kubelet plugin registration", "socket", r.SocketPath())
	return srv.Serve(lis)
}
