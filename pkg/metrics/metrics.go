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

	"github.com/pelagic-csi/pelagic/pkg/ceph"
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

// cephConnections reports, at each scrape, how the driver's connections
// to each Ceph cluster stand.
type cephConnections struct {
	state              func() map[string]ceph.ConnState
	connections, fails *prometheus.Desc
}

// NewCephConnections registers on reg the state of the connections that
// state reports (a ceph.ConnPool's State).
func NewCephConnections(reg prometheus.Registerer, state func() map[string]ceph.ConnState) {
	reg.MustRegister(&cephConnections{state: state,
		connections: prometheus.NewDesc("pelagic_ceph_connections",
			"Connections to a Ceph cluster the driver holds (connected) or is making (connecting), by cluster ID.",
			[]string{"cluster_id", "state"}, nil),
		fails: prometheus.NewDesc("pelagic_ceph_connect_failures_total",
			"Connections to a Ceph cluster that could not be made (monitors unreachable, wrong credentials), by cluster ID.",
			[]string{"cluster_id"}, nil),
	})
}

func (c *cephConnections) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connections
	ch <- c.fails
}

func (c *cephConnections) Collect(ch chan<- prometheus.Metric) {
	for id, st := range c.state() {
		ch <- prometheus.MustNewConstMetric(c.connections, prometheus.GaugeValue, float64(st.Connected), id, "connected")
		ch <- prometheus.MustNewConstMetric(c.connections, prometheus.GaugeValue, float64(st.Connecting), id, "connecting")
		ch <- prometheus.MustNewConstMetric(c.fails, prometheus.CounterValue, float64(st.Failures), id)
	}
}

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
