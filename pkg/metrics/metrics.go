// Package metrics counts and times the driver's CSI calls and serves them,
// with the Go runtime's and the process's standard metrics, in the
// Prometheus text format.
package metrics

import (
	"context"
	"net/http"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// RPC holds the metrics of the CSI calls.
type RPC struct {
	calls    *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
}

// callBuckets span 1 ms to about a minute: a call's deadline is in
// minutes at most.
var callBuckets = prometheus.ExponentialBuckets(0.001, 2.5, 13)

// NewRegistry returns a registry holding the Go runtime's and the
// process's metrics, and the CSI calls' (returned too).
func NewRegistry() (*prometheus.Registry, *RPC) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rpc := &RPC{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pelagic_csi_calls_total",
			Help: "CSI calls answered, by method and gRPC code (Aborted: the volume or name was busy with another call).",
		}, []string{"method", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pelagic_csi_call_duration_seconds",
			Help:    "How long CSI calls took, by method, whatever they answered.",
			Buckets: callBuckets,
		}, []string{"method"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pelagic_csi_calls_in_flight",
			Help: "CSI calls being served, by method.",
		}, []string{"method"}),
	}
	reg.MustRegister(rpc.calls, rpc.seconds, rpc.inFlight)
	return reg, rpc
}

// NodeOps times what a node plugin does to the host for a volume.
type NodeOps struct {
	seconds *prometheus.HistogramVec
}

// NewNodeOps registers the node operations' durations on reg.
func NewNodeOps(reg prometheus.Registerer) *NodeOps {
	n := &NodeOps{seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pelagic_node_operation_duration_seconds",
		Help:    "How long the node's map, unmap, mkfs and mount of a volume took, by operation, whatever their outcome.",
		Buckets: callBuckets,
	}, []string{"operation"})}
	reg.MustRegister(n.seconds)
	return n
}

// Observe records one operation's duration.
func (n *NodeOps) Observe(op string, d time.Duration) {
	n.seconds.WithLabelValues(op).Observe(d.Seconds())
}

// Holders counts the holders the driver refused or fenced.
type Holders struct {
	refusals, fences *prometheus.CounterVec
}

// NewHolders registers the refusal and fence counts on reg.
func NewHolders(reg prometheus.Registerer) *Holders {
	h := &Holders{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pelagic_multiattach_refusals_total",
			Help: "Holders of a volume for which a publish or a stage was refused (Multi-Attach), by call and holder state.",
		}, []string{"call", "reason"}),
		fences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pelagic_fences_total",
			Help: "Holders of a volume fenced by a publish, by holder state.",
		}, []string{"reason"}),
	}
	reg.MustRegister(h.refusals, h.fences)
	return h
}

// Refused counts one refused holder.
func (h *Holders) Refused(call, reason string) { h.refusals.WithLabelValues(call, reason).Inc() }

// Fenced counts one fenced holder.
func (h *Holders) Fenced(reason string) { h.fences.WithLabelValues(reason).Inc() }

// Interceptor counts and times every unary call; outermost, it sees the
// code and the time the caller sees.
func (m *RPC) Interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := path.Base(info.FullMethod) // "/csi.v1.Node/NodeStageVolume": NodeStageVolume
	inFlight := m.inFlight.WithLabelValues(method)
	inFlight.Inc()
	start := time.Now()
	resp, err := handler(ctx, req)
	m.seconds.WithLabelValues(method).Observe(time.Since(start).Seconds())
	inFlight.Dec()
	m.calls.WithLabelValues(method, status.Code(err).String()).Inc()
	return resp, err
}

// Handler serves reg's metrics at GET /metrics.
func Handler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}
