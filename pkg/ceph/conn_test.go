package ceph

import (
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
