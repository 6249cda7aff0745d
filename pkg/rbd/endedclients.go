package rbd

import (
	"sync"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// endedClientMemory is how long a client this node ended is remembered:
// well past the OSD's watch timeout (osd_client_watch_timeout, 30 s by
// default), after which its watch is gone anyway.
const endedClientMemory = 10 * time.Minute

// endedClients are the client instances of mappings this node unmapped by
// force after a NodeStage failed between the map and its records (an OSD
// stalled). The mapper ended them (their process is gone, their kernel
// client torn down), but they could not unwatch, so their watches linger
// until the watch timeout. They can no longer write: a retry must not be
// refused as if they held the image.
type endedClients struct {
	mu    sync.Mutex
	ended map[string]time.Time // client address -> when it was ended
}

// add remembers that the client at addr was ended at now.
func (e *endedClients) add(addr string, now time.Time) {
	if addr == "" {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended == nil {
		e.ended = map[string]time.Time{}
	}
	for a, at := range e.ended {
		if now.Sub(at) > endedClientMemory {
			delete(e.ended, a)
		}
	}
	e.ended[addr] = now
}

// has reports whether this node ended the client at addr, recently.
func (e *endedClients) has(addr string, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for a, at := range e.ended {
		if ceph.SameClient(a, addr) && now.Sub(at) <= endedClientMemory {
			return true
		}
	}
	return false
}
