package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// TestScrapeAfterCalls: calls through the interceptor show in a scrape of
// the handler, counted by code and timed, with the runtime's metrics.
func TestScrapeAfterCalls(t *testing.T) {
	reg, rpc := NewRegistry()
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/CreateVolume"}
	ok := func(context.Context, any) (any, error) { time.Sleep(2 * time.Millisecond); return "done", nil }
	busy := func(context.Context, any) (any, error) { return nil, status.Error(codes.Aborted, "busy") }
	var inFlight string
	for _, h := range []grpc.UnaryHandler{ok, ok, busy} {
		if _, err := rpc.Interceptor(context.Background(), nil, info, h); status.Code(err) == codes.Unknown {
			t.Fatal(err)
		}
	}
	// A scrape during a call counts it in flight.
	_, _ = rpc.Interceptor(context.Background(), nil, info, func(context.Context, any) (any, error) {
		inFlight = scrape(t, Handler(reg))
		return nil, nil
	})

	text := scrape(t, Handler(reg))
	for _, want := range []string{
		`pelagic_csi_calls_total{code="OK",method="CreateVolume"} 3`,
		`pelagic_csi_calls_total{code="Aborted",method="CreateVolume"} 1`,
		`pelagic_csi_call_duration_seconds_count{method="CreateVolume"} 4`,
		`pelagic_csi_call_duration_seconds_bucket{method="CreateVolume",le="+Inf"} 4`,
		`pelagic_csi_calls_in_flight{method="CreateVolume"} 0`,
		"go_goroutines ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if !strings.Contains(inFlight, `pelagic_csi_calls_in_flight{method="CreateVolume"} 1`) {
		t.Errorf("a scrape during a call does not count it in flight")
	}
	// Two calls slept 2 ms: the sum of durations moved past 4 ms.
	if strings.Contains(text, `pelagic_csi_call_duration_seconds_sum{method="CreateVolume"} 0`+"\n") {
		t.Errorf("durations were not observed")
	}
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// TestNodeOpsScraped: node operations observed show in a scrape, by operation.
func TestNodeOpsScraped(t *testing.T) {
	reg, _ := NewRegistry()
	ops := NewNodeOps(reg)
	ops.Observe("map", 30*time.Millisecond)
	ops.Observe("map", 10*time.Millisecond)
	ops.Observe("mount", time.Millisecond)
	text := scrape(t, Handler(reg))
	for _, want := range []string{
		`pelagic_node_operation_duration_seconds_count{operation="map"} 2`,
		`pelagic_node_operation_duration_seconds_sum{operation="map"} 0.04`,
		`pelagic_node_operation_duration_seconds_count{operation="mount"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// TestHoldersScraped: refusals and fences show in a scrape, by reason.
func TestHoldersScraped(t *testing.T) {
	reg, _ := NewRegistry()
	h := NewHolders(reg)
	h.Refused("publish", "attached")
	h.Refused("publish", "attached")
	h.Refused("stage", "stale")
	h.Fenced("stale")
	text := scrape(t, Handler(reg))
	for _, want := range []string{
		`pelagic_multiattach_refusals_total{call="publish",reason="attached"} 2`,
		`pelagic_multiattach_refusals_total{call="stage",reason="stale"} 1`,
		`pelagic_fences_total{reason="stale"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// TestCephConnections: each scrape reports the connection state as the
// pool reports it at that moment.
func TestCephConnections(t *testing.T) {
	reg, _ := NewRegistry()
	state := map[string]ceph.ConnState{"rook-ceph": {Connected: 2, Failures: 1}, "other": {Connecting: 1}}
	NewCephConnections(reg, func() map[string]ceph.ConnState { return state })
	text := scrape(t, Handler(reg))
	for _, want := range []string{
		`pelagic_ceph_connections{cluster_id="rook-ceph",state="connected"} 2`,
		`pelagic_ceph_connections{cluster_id="rook-ceph",state="connecting"} 0`,
		`pelagic_ceph_connections{cluster_id="other",state="connecting"} 1`,
		`pelagic_ceph_connect_failures_total{cluster_id="rook-ceph"} 1`,
		`pelagic_ceph_connect_failures_total{cluster_id="other"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	state = map[string]ceph.ConnState{"rook-ceph": {Connected: 1, Failures: 3}}
	if text := scrape(t, Handler(reg)); !strings.Contains(text, `pelagic_ceph_connect_failures_total{cluster_id="rook-ceph"} 3`) {
		t.Errorf("a later scrape does not read the pool again:\n%s", text)
	}
}
