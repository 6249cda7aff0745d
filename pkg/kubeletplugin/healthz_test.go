package kubeletplugin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type fakeProber struct {
	ready *wrapperspb.BoolValue
	err   error
	block bool // wait for the deadline
}

func (p fakeProber) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if p.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if p.err != nil {
		return nil, p.err
	}
	return &csi.ProbeResponse{Ready: p.ready}, nil
}

func TestHealthz(t *testing.T) {
	tests := []struct {
		name     string
		prober   fakeProber
		method   string
		path     string
		wantCode int
		wantBody string
	}{
		{"ready", fakeProber{ready: wrapperspb.Bool(true)}, "GET", "/healthz", 200, "ok"},
		{"ready left unset means ready", fakeProber{}, "GET", "/healthz", 200, "ok"},
		{"not ready", fakeProber{ready: wrapperspb.Bool(false)}, "GET", "/healthz", 503, "not ready"},
		{"probe error", fakeProber{err: errors.New("cluster \"c\": monitor 10.0.0.1:6789: connection refused")},
			"GET", "/healthz", 503, "connection refused"},
		{"probe hangs past the deadline", fakeProber{block: true}, "GET", "/healthz", 503, "deadline exceeded"},
		{"other path", fakeProber{}, "GET", "/metrics", 404, ""},
		{"not a GET", fakeProber{}, "POST", "/healthz", 405, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := Healthz(tc.prober, 50*time.Millisecond)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tc.method, tc.path, rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestServeHealthz(t *testing.T) {
	if err := ServeHealthz(context.Background(), "127.0.0.1:-1", fakeProber{}, time.Second); err == nil {
		t.Error("a bad address was accepted")
	}
	// A free port, then a real request to the served endpoint.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHealthz(ctx, addr, fakeProber{ready: wrapperspb.Bool(false)}, time.Second) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("GET /healthz of a driver that is not ready = %d", resp.StatusCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeHealthz = %v after its context ended", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHealthz did not return after its context ended")
	}
}

// The handler answers from the Identity service's Probe itself.
var _ Prober = csi.IdentityServer(nil)
