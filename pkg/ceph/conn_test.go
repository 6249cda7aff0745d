package ceph

import (
	"context"
	"reflect"
	"testing"
	"time"
)

// A librados timeout is whole seconds, at least one; 0 turns it off, as a
// mgr connection needs (see GetForMgr).
func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0", time.Millisecond: "1", 1400 * time.Millisecond: "1", 15 * time.Second: "15"} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %s, want %s", d, got, want)
		}
	}
}

// TestConnPoolStateCountsFailures: a connect that fails is counted against
// its cluster, and leaves no connection behind.
func TestConnPoolStateCountsFailures(t *testing.T) {
	p := NewConnPool(Timeouts{Mount: time.Second})
	defer p.Close()
	// librados refuses the key before it dials anyone.
	cluster := &ClusterConfig{ClusterID: "nowhere", Monitors: []string{"127.0.0.1:9"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.Get(ctx, cluster, Credentials{ID: "admin", Key: "not-a-key"}); err == nil {
		t.Fatal("connected to a cluster with no monitor")
	}
	if got, want := p.State(), (map[string]ConnState{"nowhere": {Failures: 1}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("State() = %+v, want %+v", got, want)
	}
}
