// Command bench measures the Pelagic RBD driver against the floor: the same
// Ceph work done directly (go-ceph for the controller, the node's tools
// run by hand for the node), interleaved in one run so that the machine's
// load falls on both. For each call it prints p50, p90, p99, max, ops/s,
// errors by gRPC code and the ratio of the driver's p50 to the floor's,
// as a table or as JSON, and the driver's memory at idle and at peak.
//
// The driver runs as a process of its own (controller and node in one,
// fuse mapper, see e2e/bench.sh); this program is a plain CSI client of
// it, and a plain Ceph client for the floor.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// options are the command's flags.
type options struct {
	endpoint   string
	driverPID  int
	configPath string
	clusterID  string
	pool       string
	user       string
	keyFile    string
	workDir    string

	size            int64
	concurrency     []int
	volumes         int // CreateVolume and DeleteVolume, at each concurrency
	snapshots       int // snapshots, restores, clones, expansions, at each concurrency
	nodeVolumes     int
	nodeConcurrency int
	nodeGroup       int // node volumes mapped at once, per side
	rounds          int // batches each side's calls are split into, to interleave them
	expandRounds    int // times each volume is grown
	copyRounds      int // times the copy workloads run, each on volumes of its own
	trashKept       int // images kept in the trash by their snapshots throughout
	skip            string

	// The CephFS driver's, when one runs (-cephfs-endpoint).
	fsEndpoint, fsName, fsUser, fsKeyFile string
	fsVolumes, fsClones                   int
	fsConcurrency                         []int

	json   bool
	strict bool
}

func parseOptions(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.endpoint, "endpoint", "", "the driver's CSI endpoint, unix:///path")
	fs.IntVar(&o.driverPID, "driver-pid", 0, "the driver's process ID, to read its memory (0: not reported)")
	fs.StringVar(&o.configPath, "config", "", "the driver's cluster config (config.json); the floor connects with it")
	fs.StringVar(&o.clusterID, "cluster-id", "", "clusterID of the StorageClass")
	fs.StringVar(&o.pool, "pool", "rbd", "RBD pool")
	fs.StringVar(&o.user, "user", "", "cephx user of the secrets, used by the floor too")
	fs.StringVar(&o.keyFile, "key-file", "", "file holding the user's cephx key")
	fs.StringVar(&o.workDir, "work-dir", "", "directory for staging and target paths and the floor's mounts")
	fs.Int64Var(&o.size, "size", 1<<30, "volume size in bytes")
	conc := fs.String("concurrency", "1,16", "concurrencies of the controller workloads")
	fs.IntVar(&o.volumes, "volumes", 200, "volumes created and deleted at each concurrency")
	fs.IntVar(&o.snapshots, "snapshots", 20, "snapshots, restores, clones and expansions at each concurrency")
	fs.IntVar(&o.nodeVolumes, "node-volumes", 20, "volumes staged, published, unpublished and unstaged")
	fs.IntVar(&o.nodeConcurrency, "node-concurrency", 1, "concurrency of the node workload")
	fs.IntVar(&o.nodeGroup, "node-group", 4, "node volumes mapped at once, per side")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds each workload is interleaved in")
	fs.IntVar(&o.copyRounds, "copy-rounds", 3, "times the copy workloads (snapshots, restores, clones, expansion) run at each concurrency")
	fs.IntVar(&o.expandRounds, "expand-rounds", 5, "times each volume is grown, by a quarter of -size each time")
	fs.IntVar(&o.trashKept, "trash-kept", 0, "images left in the trash, kept by a snapshot each, throughout the run")
	fs.StringVar(&o.skip, "skip", "", "workloads to leave out: controller, copies, node, cephfs (comma-separated)")
	fs.StringVar(&o.fsEndpoint, "cephfs-endpoint", "", "the CephFS driver's CSI endpoint (controller); empty: CephFS is not measured")
	fs.StringVar(&o.fsName, "fs-name", "cephfs", "CephFS filesystem of the CephFS class")
	fs.StringVar(&o.fsUser, "fs-user", "", "cephx user of the CephFS secrets, used by the CephFS floor too")
	fs.StringVar(&o.fsKeyFile, "fs-key-file", "", "file holding the CephFS user's cephx key")
	fs.IntVar(&o.fsVolumes, "cephfs-volumes", 50, "CephFS volumes created and deleted at each CephFS concurrency")
	fsConc := fs.String("cephfs-concurrency", "4,8", "concurrencies of CephFS CreateVolume and DeleteVolume")
	fs.IntVar(&o.fsClones, "cephfs-clones", 15, "CephFS volumes restored from a snapshot, and clones of a volume, one at a time")
	fs.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	fs.BoolVar(&o.strict, "strict", false, "exit 1 when a driver call failed at the highest concurrency")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var err error
	if o.concurrency, err = parseConcurrency("concurrency", *conc); err != nil {
		return o, err
	}
	if o.fsConcurrency, err = parseConcurrency("cephfs-concurrency", *fsConc); err != nil {
		return o, err
	}
	if o.fsEndpoint != "" && (o.fsUser == "" || o.fsKeyFile == "") {
		return o, errors.New("-cephfs-endpoint needs -fs-user and -fs-key-file")
	}
	var missing []string
	for flag, v := range map[string]string{"endpoint": o.endpoint, "config": o.configPath, "cluster-id": o.clusterID,
		"user": o.user, "key-file": o.keyFile, "work-dir": o.workDir} {
		if v == "" {
			missing = append(missing, "-"+flag)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return o, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return o, nil
}

// parseConcurrency reads a list of concurrencies, "1,16".
func parseConcurrency(flag, list string) ([]int, error) {
	var out []int
	for _, c := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s: %q is not a positive number", flag, c)
		}
		out = append(out, n)
	}
	return out, nil
}

func (o options) skipped(workload string) bool {
	return slices.Contains(strings.Split(o.skip, ","), workload)
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, runErr := run(ctx, o)
	if len(res.Ops) > 0 { // an interrupted run still shows what it measured
		if err := res.write(os.Stdout, o.json); err != nil {
			fail(err)
		}
	}
	if runErr != nil {
		fail(runErr)
	}
	if top := slices.Max(o.concurrency); o.strict && res.failedAt(top) {
		fmt.Fprintf(os.Stderr, "bench: driver calls failed at concurrency %d\n", top)
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
	os.Exit(1)
}

// run connects both sides, measures every workload and returns the result.
func run(ctx context.Context, o options) (result, error) {
	b, closeAll, err := connect(ctx, o)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	mem := driverMemory{PID: o.driverPID}
	if o.driverPID != 0 {
		if mem.Idle, err = readMemory(o.driverPID); err != nil {
			return result{}, fmt.Errorf("reading the driver's memory: %w", err)
		}
	}
	if err := b.warmUp(ctx); err != nil {
		return result{}, err
	}
	b.measureAll(ctx)
	if o.driverPID != 0 {
		if mem.End, err = readMemory(o.driverPID); err != nil {
			return result{}, fmt.Errorf("reading the driver's memory: %w", err)
		}
	}
	return b.result(mem), ctx.Err()
}

func (b *bench) measureAll(ctx context.Context) {
	release := b.keepInTrash(ctx, b.opts.trashKept)
	defer release()
	for _, conc := range b.opts.concurrency {
		if !b.opts.skipped("controller") && ctx.Err() == nil {
			b.createDelete(ctx, conc)
		}
		// The copy workloads have 20 calls a side each: 16 at once are one
		// burst, whose p50 moves with what else the cluster is doing then.
		for round := 0; round < b.opts.copyRounds && !b.opts.skipped("copies") && ctx.Err() == nil; round++ {
			b.copies(ctx, conc, round)
		}
	}
	if !b.opts.skipped("node") && ctx.Err() == nil {
		b.nodeWork(ctx)
	}
	b.measureCephFS(ctx)
}

// connect reaches the driver (waiting until it is ready) and the cluster.
func connect(ctx context.Context, o options) (*bench, func(), error) {
	key, err := os.ReadFile(o.keyFile)
	if err != nil {
		return nil, nil, err
	}
	creds := ceph.Credentials{ID: o.user, Key: strings.TrimSpace(string(key))}
	cfg, err := ceph.LoadConfig(o.configPath)
	if err != nil {
		return nil, nil, err
	}
	cluster, err := cfg.Cluster(o.clusterID)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(o.endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	drv := newDriverClient(conn, o, map[string]string{"userID": creds.ID, "userKey": creds.Key})
	if err := drv.waitReady(ctx, time.Minute); err != nil {
		conn.Close()
		return nil, nil, err
	}
	// The floor's connection is made as the driver makes its own.
	conns := ceph.NewConnPool(ceph.DefaultTimeouts)
	cc, err := conns.Get(ctx, cluster, creds)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	fl, err := newFloor(cc.Conn, o.pool, drv.params)
	if err != nil {
		conns.Close()
		conn.Close()
		return nil, nil, err
	}
	node, err := newFuseFloor(filepath.Join(o.workDir, "floor"), cluster.MonHost(), creds.ID, creds.Key, o.pool)
	if err != nil {
		fl.close()
		conns.Close()
		conn.Close()
		return nil, nil, err
	}
	b := &bench{opts: o, drv: drv, floor: fl, node: node, log: os.Stderr, tag: "bench-" + strings.ToLower(rand.Text()[:6])}
	closeFS := func() {}
	if o.fsEndpoint != "" {
		if b.fs, closeFS, err = connectCephFS(ctx, o, conns, cluster, b.tag); err != nil {
			node.close()
			fl.close()
			conns.Close()
			conn.Close()
			return nil, nil, err
		}
	}
	return b, func() { closeFS(); node.close(); fl.close(); conns.Close(); conn.Close() }, nil
}

// warmUp makes both sides' first calls, which open connections and
// caches, outside the measurement.
func (b *bench) warmUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	v, err := b.drv.createVolume(ctx, b.name("warm-up"), b.opts.size, nil)
	if err != nil {
		return fmt.Errorf("warm-up CreateVolume: %w", err)
	}
	if err := b.drv.deleteVolume(ctx, v); err != nil {
		return fmt.Errorf("warm-up DeleteVolume: %w", err)
	}
	rec, err := b.floor.createImage(ctx, b.name("warm-up"), b.opts.size)
	if err != nil {
		return fmt.Errorf("warm-up of the floor: %w", err)
	}
	return b.floor.deleteImage(ctx, rec, untimed)
}
