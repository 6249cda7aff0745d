package ceph

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Timeouts bound every RADOS operation so no call can hang forever.
type Timeouts struct {
	OSDOp time.Duration // rados_osd_op_timeout
	MonOp time.Duration // rados_mon_op_timeout
	Mount time.Duration // client_mount_timeout
}

// DefaultTimeouts suit a CSI driver: sidecars time out calls after a
// minute or two, so a Ceph call must give up well before that.
var DefaultTimeouts = Timeouts{OSDOp: 30 * time.Second, MonOp: 15 * time.Second, Mount: 15 * time.Second}

// Conn is a connected RADOS handle shared by every request for one
// cluster and user.
type Conn struct {
	*rados.Conn
	ClusterID string
	User      string

	cluster *RadosCluster // this connection's view of the cluster
}

type connKey struct {
	clusterID, monHost, user string
	keyHash                  [32]byte
	forMgr                   bool
}

type connEntry struct {
	ready chan struct{}
	conn  *Conn
	err   error
}

// ConnPool caches one connection per (cluster, monitors, user, key). A
// failed connection is not cached, so a corrected secret works at once.
type ConnPool struct {
	Timeouts Timeouts

	mu       sync.Mutex
	conns    map[connKey]*connEntry
	failures map[string]uint64 // failed connects by cluster ID
}

// NewConnPool returns an empty pool using t (zero fields take defaults).
func NewConnPool(t Timeouts) *ConnPool {
	if t.OSDOp == 0 {
		t.OSDOp = DefaultTimeouts.OSDOp
	}
	if t.MonOp == 0 {
		t.MonOp = DefaultTimeouts.MonOp
	}
	if t.Mount == 0 {
		t.Mount = DefaultTimeouts.Mount
	}
	return &ConnPool{Timeouts: t, conns: make(map[connKey]*connEntry), failures: map[string]uint64{}}
}

// Get returns the cached connection for cluster and creds, connecting if
// needed. It returns when ctx is done even if the connect is still running.
func (p *ConnPool) Get(ctx context.Context, cluster *ClusterConfig, creds Credentials) (*Conn, error) {
	return p.get(ctx, connKey{cluster.ClusterID, cluster.MonHost(), creds.ID, sha256.Sum256([]byte(creds.Key)), false}, cluster, creds)
}

// GetForMgr returns a connection for mgr commands, on which librados's
// rados_mon_op_timeout is off: librados times a mgr command out by
// returning while the command's reply buffers stay registered, and a reply
// that comes later writes into freed memory (RadosClient::mgr_command, up
// to Ceph 19 at least). Callers bound their wait themselves (util.Do); a
// late reply then lands in buffers still alive.
func (p *ConnPool) GetForMgr(ctx context.Context, cluster *ClusterConfig, creds Credentials) (*Conn, error) {
	return p.get(ctx, connKey{cluster.ClusterID, cluster.MonHost(), creds.ID, sha256.Sum256([]byte(creds.Key)), true}, cluster, creds)
}

func (p *ConnPool) get(ctx context.Context, key connKey, cluster *ClusterConfig, creds Credentials) (*Conn, error) {
	p.mu.Lock()
	e, ok := p.conns[key]
	if !ok {
		e = &connEntry{ready: make(chan struct{})}
		p.conns[key] = e
		go p.connect(key, e, cluster, creds)
	}
	p.mu.Unlock()

	select {
	case <-e.ready:
		return e.conn, e.err
	case <-ctx.Done():
		return nil, fmt.Errorf("connecting to cluster %q as %s: %w", cluster.ClusterID, creds, ctx.Err())
	}
}

func (p *ConnPool) connect(key connKey, e *connEntry, cluster *ClusterConfig, creds Credentials) {
	t := p.Timeouts
	if key.forMgr {
		t.MonOp = 0
	}
	e.conn, e.err = dial(cluster, creds, t)
	if e.err != nil {
		p.mu.Lock()
		delete(p.conns, key)
		p.failures[key.clusterID]++
		p.mu.Unlock()
	}
	close(e.ready)
}

func dial(cluster *ClusterConfig, creds Credentials, t Timeouts) (*Conn, error) {
	fail := func(step string, err error) (*Conn, error) {
		return nil, fmt.Errorf("connecting to cluster %q (monitors %s) as %s: %s: %w",
			cluster.ClusterID, cluster.MonHost(), creds, step, err)
	}
	rc, err := rados.NewConnWithUser(creds.ID)
	if err != nil {
		return fail("creating handle", err)
	}
	opts := [][2]string{
		{"mon_host", cluster.MonHost()},
		{"key", creds.Key},
		{"rados_osd_op_timeout", seconds(t.OSDOp)},
		{"rados_mon_op_timeout", seconds(t.MonOp)},
		{"client_mount_timeout", seconds(t.Mount)},
		// The driver never reads /etc/ceph: everything comes from config and secrets.
		{"keyring", ""},
		{"log_to_stderr", "false"},
		{"err_to_stderr", "false"},
	}
	for _, o := range opts {
		if err := rc.SetConfigOption(o[0], o[1]); err != nil {
			rc.Shutdown()
			return fail("setting "+o[0], err)
		}
	}
	if err := rc.Connect(); err != nil {
		rc.Shutdown()
		switch Errno(err) {
		case syscall.EPERM, syscall.EACCES:
			return fail("authentication failed (check the user ID and key in the secret)", err)
		case syscall.EINVAL:
			return fail("the key in the secret is not a valid cephx key", err)
		case syscall.ETIMEDOUT:
			// librados retries a rejected key until client_mount_timeout, so
			// a wrong key and unreachable monitors look the same here.
			return fail("no monitor accepted the session within "+t.Mount.String()+
				" (monitors unreachable, or the user ID or key in the secret is wrong)", err)
		}
		return fail("connect", err)
	}
	conn := &Conn{Conn: rc, ClusterID: cluster.ClusterID, User: creds.ID}
	conn.cluster = newRadosCluster(conn)
	return conn, nil
}

// Cached returns the live connections to one cluster, for health checks.
func (p *ConnPool) Cached(clusterID string) []*Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*Conn
	for k, e := range p.conns {
		if k.clusterID != clusterID {
			continue
		}
		select {
		case <-e.ready:
			if e.conn != nil {
				out = append(out, e.conn)
			}
		default:
		}
	}
	return out
}

// ConnState is how a pool's connections to one cluster stand.
type ConnState struct {
	Connected  int    // cached connections, each one librados handle
	Connecting int    // connects under way
	Failures   uint64 // connects that failed since the pool was made
}

// State reports the pool's connections by cluster ID, for metrics.
func (p *ConnPool) State() map[string]ConnState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]ConnState{}
	for id, n := range p.failures {
		out[id] = ConnState{Failures: n}
	}
	for k, e := range p.conns {
		st := out[k.clusterID]
		select {
		case <-e.ready:
			if e.conn != nil {
				st.Connected++
			}
		default:
			st.Connecting++
		}
		out[k.clusterID] = st
	}
	return out
}

// Close shuts every cached connection down.
func (p *ConnPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.conns {
		select {
		case <-e.ready:
			if e.conn != nil {
				e.conn.Shutdown()
			}
		default:
		}
		delete(p.conns, k)
	}
}

// seconds spells a timeout for librados; 0 turns it off.
func seconds(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	if s < 1 && d > 0 {
		s = 1
	}
	return strconv.Itoa(s)
}

// MonCommand sends one JSON mon command through conn, bounded by ctx.
func (c *Conn) MonCommand(ctx context.Context, cmd map[string]any) ([]byte, error) {
	return MonCommand(ctx, c.Conn, cmd)
}

// MonCommand sends one JSON mon command, bounded by ctx, and folds the
// mon's status text into the error.
func MonCommand(ctx context.Context, rc *rados.Conn, cmd map[string]any) ([]byte, error) {
	buf, err := jsonMarshal(cmd)
	if err != nil {
		return nil, err
	}
	prefix, _ := cmd["prefix"].(string)
	type reply struct {
		out    []byte
		status string
	}
	r, err := util.Do(ctx, "mon command "+prefix, func() (reply, error) {
		out, status, err := rc.MonCommand(buf)
		return reply{out, status}, err
	})
	if err != nil {
		if r.status != "" {
			return nil, fmt.Errorf("mon command %q: %s: %w", prefix, r.status, err)
		}
		return nil, fmt.Errorf("mon command %q: %w", prefix, err)
	}
	return r.out, nil
}
