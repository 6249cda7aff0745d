// Package csiserver serves CSI services over gRPC: endpoint handling,
// request logging with secrets stripped, request IDs, and the Identity
// service shared by the RBD and CephFS drivers.
package csiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// Services are the CSI services one process serves; nil ones are skipped.
type Services struct {
	Identity   csi.IdentityServer
	Controller csi.ControllerServer
	Node       csi.NodeServer
}

// ParseEndpoint splits "unix:///path" or "tcp://host:port" into a network
// and an address. A bare path means a unix socket.
func ParseEndpoint(endpoint string) (network, addr string, err error) {
	if strings.HasPrefix(endpoint, "/") {
		return "unix", endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", "", fmt.Errorf("invalid endpoint %q: %w", endpoint, err)
	}
	switch u.Scheme {
	case "unix":
		addr = u.Path
		if u.Host != "" {
			addr = u.Host + u.Path // unix://relative/path
		}
		if addr == "" {
			return "", "", fmt.Errorf("invalid endpoint %q: empty socket path", endpoint)
		}
		return "unix", addr, nil
	case "tcp":
		if u.Host == "" {
			return "", "", fmt.Errorf("invalid endpoint %q: empty address", endpoint)
		}
		return "tcp", u.Host, nil
	default:
		return "", "", fmt.Errorf("invalid endpoint %q: scheme must be unix or tcp", endpoint)
	}
}

// Listen opens the endpoint, replacing a stale unix socket left by a
// previous run.
func Listen(endpoint string) (net.Listener, error) {
	network, addr, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return nil, err
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", addr, err)
		}
	}
	return net.Listen(network, addr)
}

// NewServer returns a gRPC server with the services registered, every
// call bounded by callTimeout when the caller set no deadline (0: none),
// and every request logged with secrets stripped. Interceptors in outer
// (metrics) see each call before all that.
func NewServer(s Services, callTimeout time.Duration, outer ...grpc.UnaryServerInterceptor) *grpc.Server {
	chain := slices.Concat(outer, []grpc.UnaryServerInterceptor{LogInterceptor, DeadlineInterceptor(callTimeout)})
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
	if s.Identity != nil {
		csi.RegisterIdentityServer(srv, s.Identity)
	}
	if s.Controller != nil {
		csi.RegisterControllerServer(srv, s.Controller)
	}
	if s.Node != nil {
		csi.RegisterNodeServer(srv, s.Node)
	}
	return srv
}

// DeadlineInterceptor gives a call without a deadline one of d, so no
// request can hold a lock or a Ceph call forever.
func DeadlineInterceptor(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return handler(ctx, req)
	}
}

// Serve serves s on endpoint until ctx is cancelled (see NewServer).
func Serve(ctx context.Context, endpoint string, s Services, callTimeout time.Duration, outer ...grpc.UnaryServerInterceptor) error {
	lis, err := Listen(endpoint)
	if err != nil {
		return err
	}
	srv := NewServer(s, callTimeout, outer...)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	klog.InfoS("serving CSI", "endpoint", endpoint)
	return srv.Serve(lis)
}
