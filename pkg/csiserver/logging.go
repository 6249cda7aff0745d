package csiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync/atomic"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

type requestIDKey struct{}

var requestPrefix = newRequestPrefix()

// requestCounter numbers requests within this process; with the random
// prefix, an ID is unique across restarts.
var requestCounter atomic.Uint64

func newRequestPrefix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RequestID returns the ID of the request ctx belongs to, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// LogInterceptor gives every call a request ID and logs the request and
// response with every secret field stripped (CSI marks them csi_secret).
func LogInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id := requestPrefix + "-" + itoa(requestCounter.Add(1))
	logger := klog.Background().WithValues("req", id)
	ctx = context.WithValue(ctx, requestIDKey{}, id)
	ctx = klog.NewContext(ctx, logger)

	start := time.Now()
	logger.V(2).Info("request", "method", info.FullMethod, "body", protosanitizer.StripSecrets(req).String())
	resp, err := handler(ctx, req)
	elapsed := time.Since(start)
	if err != nil {
		logger.Error(nil, "failed", "method", info.FullMethod, "code", status.Code(err).String(),
			"error", status.Convert(err).Message(), "elapsed", elapsed)
		return resp, err
	}
	logger.V(2).Info("response", "method", info.FullMethod, "body", protosanitizer.StripSecrets(resp).String(),
		"elapsed", elapsed)
	return resp, nil
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
