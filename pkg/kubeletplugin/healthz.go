package kubeletplugin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// Prober is the CSI Identity call liveness follows.
type Prober interface {
	Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error)
}

// Healthz answers GET /healthz from the driver's own Probe: 200 when ready,
// 503 when not, so a liveness probe and the CO's Probe never disagree.
func Healthz(p Prober, timeout time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), timeout)
		defer cancel()
		resp, err := p.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			http.Error(w, "probe failed: "+err.Error(), http.StatusServiceUnavailable)
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		default: // CSI: a Probe without "ready" means ready
			_, _ = w.Write([]byte("ok\n"))
		}
	})
	return mux
}

// ServeHealthz serves Healthz on addr (host:port) until ctx ends.
func ServeHealthz(ctx context.Context, addr string, p Prober, timeout time.Duration) error {
	return ServeHTTP(ctx, addr, Healthz(p, timeout), "liveness")
}

// ServeHTTP serves h on addr (host:port) until ctx ends; what names it in
// the log.
func ServeHTTP(ctx context.Context, addr string, h http.Handler, what string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	klog.InfoS("serving "+what, "address", lis.Addr().String())
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
