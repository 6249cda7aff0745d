package csiserver

import (
	"context"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/pelagic-csi/pelagic/pkg/util"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// captureKlog routes klog to a buffer at verbosity 5 until the test ends.
func captureKlog(t *testing.T) *util.LockedBuffer {
	t.Helper()
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	if err := fs.Parse([]string{"-v=5", "-logtostderr=false", "-alsologtostderr=false", "-stderrthreshold=FATAL"}); err != nil {
		t.Fatal(err)
	}
	buf := &util.LockedBuffer{}
	klog.SetOutput(buf)
	t.Cleanup(func() {
		klog.Flush()
		_ = fs.Parse([]string{"-v=0", "-logtostderr=true", "-stderrthreshold=ERROR"})
		klog.SetOutput(os.Stderr)
	})
	return buf
}

const secretKey = "AQD-TOP-SECRET-KEY=="

func TestLogInterceptorStripsSecrets(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		wantLog []string
	}{
		{"handler fails", status.Error(codes.Internal, "creating image csi-vol-1: boom"),
			[]string{`"failed"`, "code=\"Internal\"", "creating image csi-vol-1: boom"}},
		{"handler succeeds", nil, []string{`"response"`, "csi-vol-1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf := captureKlog(t)
			req := &csi.CreateVolumeRequest{
				Name:       "pvc-1",
				Parameters: map[string]string{"clusterID": "rook-ceph", "pool": "replicapool"},
				Secrets:    map[string]string{"userID": "csi-rbd-provisioner", "userKey": secretKey},
			}
			info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/CreateVolume"}
			var reqID string
			handler := func(ctx context.Context, req any) (any, error) {
				reqID = RequestID(ctx)
				klog.FromContext(ctx).Info("inside handler")
				if tc.err != nil {
					return nil, tc.err
				}
				return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: "csi-vol-1"}}, nil
			}
			_, err := LogInterceptor(context.Background(), req, info, handler)
			if status.Code(err) != status.Code(tc.err) {
				t.Fatalf("interceptor returned %v, want %v", err, tc.err)
			}
			klog.Flush()
			out := buf.String()
			if reqID == "" {
				t.Fatal("handler saw no request ID")
			}
			want := append([]string{"/csi.v1.Controller/CreateVolume", `"request"`, `"inside handler"`, "req=\"" + reqID + "\"",
				"pvc-1", "***stripped***"}, tc.wantLog...)
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("log lacks %s:\n%s", w, out)
				}
			}
			if strings.Contains(out, secretKey) || strings.Contains(out, "TOP-SECRET") {
				t.Errorf("log leaks the secret:\n%s", out)
			}
		})
	}
}

func TestRequestIDsAreUnique(t *testing.T) {
	seen := map[string]bool{}
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Identity/Probe"}
	for range 100 {
		_, _ = LogInterceptor(context.Background(), &csi.ProbeRequest{}, info, func(ctx context.Context, _ any) (any, error) {
			id := RequestID(ctx)
			if id == "" || seen[id] {
				t.Fatalf("request ID %q empty or repeated", id)
			}
			seen[id] = true
			return &csi.ProbeResponse{}, nil
		})
	}
	if RequestID(context.Background()) != "" {
		t.Error("a context outside a request has an ID")
	}
}

func TestItoa(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 7: "7", 10: "10", 18446744073709551615: "18446744073709551615"} {
		if got := itoa(n); got != want {
			t.Errorf("itoa(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDeadlineInterceptor(t *testing.T) {
	intercept := DeadlineInterceptor(time.Minute)
	var seen time.Time
	handler := func(ctx context.Context, _ any) (any, error) {
		seen, _ = ctx.Deadline()
		return nil, nil
	}
	if _, err := intercept(context.Background(), nil, &grpc.UnaryServerInfo{}, handler); err != nil {
		t.Fatal(err)
	}
	if time.Until(seen) < 50*time.Second {
		t.Errorf("a call without a deadline got %v, want about a minute", time.Until(seen))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	if _, err := intercept(ctx, nil, &grpc.UnaryServerInfo{}, handler); err != nil {
		t.Fatal(err)
	}
	if !seen.Equal(want) {
		t.Errorf("the caller's deadline was replaced: %v, want %v", seen, want)
	}
}
