package ceph

import (
	"context"
	"errors"
	"time"
)

// Cluster is what both drivers need from one Ceph cluster, whatever they
// keep in it: pools, their space, blocklisting (fencing), and the client
// instance of the connection itself. RadosCluster is the real one,
// FakeCluster the one unit tests use.
type Cluster interface {
	ClusterID() string
	PoolID(ctx context.Context, pool string) (int64, error)
	PoolName(ctx context.Context, id int64) (string, error)
	// AvailableBytes is what the pool can still store.
	AvailableBytes(ctx context.Context, pool string) (int64, error)
	// Blocklist fences one client instance ("IP:PORT/NONCE") until expiry.
	// Whether blocklisting an instance already listed moves its expiry
	// depends on the Ceph release (Pacific keeps the old one).
	Blocklist(ctx context.Context, addr string, expiry time.Duration) error
	// BlocklistExpiry tells whether addr is blocklisted, and until when.
	BlocklistExpiry(ctx context.Context, addr string) (time.Time, bool, error)
	// Unblocklist lifts a fence.
	Unblocklist(ctx context.Context, addr string) error
	// ClientAddr is this connection's own client instance address.
	ClientAddr(ctx context.Context) (string, error)
	// PoolsHolding lists the pools whose namespace holds any of the
	// objects oids (a journal's directories, say); pools this user cannot
	// open hold none.
	PoolsHolding(ctx context.Context, namespace string, oids ...string) ([]string, error)
}

// Pool is one pool and RADOS namespace, with the small pool-level objects
// a driver keeps there in omap.
type Pool interface {
	Name() string
	ID() int64
	Namespace() string
	// ReadObjectMap reads the omap of a small pool-level object; a missing
	// object reads as empty.
	ReadObjectMap(ctx context.Context, oid string) (map[string]string, error)
	// UpdateObjectMap sets and removes keys of such an object in one
	// operation, creating it when missing.
	UpdateObjectMap(ctx context.Context, oid string, set map[string]string, remove []string) error
}

// ErrPoolNotFound is returned for a pool that does not exist.
var ErrPoolNotFound = errors.New("pool not found")
