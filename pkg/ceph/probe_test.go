package ceph

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestMonTCPAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.1", "10.0.0.1:6789"},
		{"10.0.0.1:3300", "10.0.0.1:3300"},
		{"v2:10.0.0.1:3300/0", "10.0.0.1:3300"},
		{"v1:10.0.0.1:6789/0", "10.0.0.1:6789"},
		{"[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0]", "10.0.0.1:3300"},
		{"mon.example.com", "mon.example.com:6789"},
		{"fd00::1", "[fd00::1]:6789"},
		{"[fd00::1]:3300", "[fd00::1]:3300"},
		{"v2:[fd00::1]:3300/0", "[fd00::1]:3300"},
	}
	for _, tc := range tests {
		if got := MonTCPAddr(tc.in); got != tc.want {
			t.Errorf("MonTCPAddr(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// fakeMon accepts connections and greets them with banner.
func fakeMon(t *testing.T, banner string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(banner))
			time.AfterFunc(time.Second, func() { c.Close() })
		}
	}()
	return l.Addr().String()
}

func TestProbe(t *testing.T) {
	ceph, http, silent := fakeMon(t, "ceph v027"), fakeMon(t, "HTTP/1.1 400"), fakeMon(t, "")
	tests := []struct {
		name     string
		monitors string
		ready    bool
	}{
		{"ceph banner", `"` + ceph + `"`, true},
		{"second monitor answers", `"` + http + `", "v2:` + ceph + `/0"`, true},
		{"not ceph", `"` + http + `"`, false},
		{"silent", `"` + silent + `"`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(`[{"clusterID": "c", "monitors": [` + tc.monitors + `]}]`))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err = (&Prober{Config: cfg}).Probe(ctx)
			if (err == nil) != tc.ready {
				t.Errorf("Probe = %v, want ready %v", err, tc.ready)
			}
		})
	}
}
