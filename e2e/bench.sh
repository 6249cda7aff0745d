#!/usr/bin/env bash
# bench.sh [ARGS]: the benchmark. Starts a local Ceph cluster, the Pelagic
# RBD driver (controller and node in one process, fuse mapper, -v=2) and its
# CephFS controller, runs e2e/bench against the drivers and the floor,
# prints its table, and stops them. ARGS go to the program (-json, -strict,
# -volumes N, -skip node,cephfs, -cephfs-clones N, ...).
# BENCH_DIR=DIR keeps the cluster directory and the driver's log there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${BENCH_DIR:-$(mktemp -d /tmp/pelagic-bench.XXXXXX)}
mkdir -p "$DIR"
cleanup() {
	[[ -n ${FS_DRIVER_PID:-} ]] && kill "$FS_DRIVER_PID" 2>/dev/null && wait "$FS_DRIVER_PID" 2>/dev/null
	[[ -n ${DRIVER_PID:-} ]] && kill "$DRIVER_PID" 2>/dev/null && wait "$DRIVER_PID" 2>/dev/null
	bash "$ROOT/e2e/ceph/down.sh" "$DIR/cluster" >/dev/null 2>&1 || true
	[[ -n ${BENCH_DIR:-} ]] || rm -rf "$DIR"
}
trap cleanup EXIT

cd "$ROOT"
go build -tags pacific -o "$DIR/bench" ./e2e/bench
bash "$ROOT/e2e/ceph/up.sh" "$DIR/cluster" | tail -n 1 >&2
# shellcheck disable=SC1091
source "$DIR/cluster/cluster.env"
# Snapshot creation and removal wait for the monitor's next proposal: at
# the test cluster's 50 ms interval (ceph.conf) they take 50 or 100 ms by
# the phase of the monitor's timer, on either side, whatever the client
# does around them. At 5 ms a creation still took 5 or 10 ms by that
# phase, about half the call; at 1 ms the steps are smaller than what the
# driver adds, so the ratio measures the driver, not the phase.
# (A runtime override: ceph.conf outranks the monitors' config database.)
for opt in paxos_propose_interval paxos_min_wait; do
	ceph --conf "$CEPH_CONF" --id "$CEPH_ADMIN_ID" --keyring "$CEPH_ADMIN_KEYRING" tell mon.a config set "$opt" 0.001 >/dev/null
done
cat >"$DIR/config.json" <<JSON
[{"clusterID": "bench", "monitors": ["$CEPH_MONITORS"], "rbd": {}, "cephFS": {"subvolumeGroup": "csi"}}]
JSON
# Node state, volume paths and the floor's mounts live inside the cluster
# directory, so down.sh unmounts and unmaps whatever a failed run leaves.
"$ROOT/bin/pelagic" --type=rbd --controller --node --nodeid=bench-node --mounter=fuse \
	--endpoint="unix://$DIR/csi.sock" --config="$DIR/config.json" --state-dir="$DIR/cluster/bench/state" -v=2 \
	>"$DIR/driver.log" 2>&1 &
DRIVER_PID=$!
echo "driver started (pid $DRIVER_PID, log $DIR/driver.log)" >&2
"$ROOT/bin/pelagic" --type=cephfs --controller --endpoint="unix://$DIR/cephfs.sock" --config="$DIR/config.json" -v=2 \
	>"$DIR/cephfs-driver.log" 2>&1 &
FS_DRIVER_PID=$!
echo "CephFS driver started (pid $FS_DRIVER_PID, log $DIR/cephfs-driver.log)" >&2
"$DIR/bench" -endpoint="unix://$DIR/csi.sock" -driver-pid="$DRIVER_PID" -config="$DIR/config.json" \
	-cluster-id=bench -pool="$CEPH_POOL" -user="$CEPH_RBD_USER_ID" -key-file=<(printf %s "$CEPH_RBD_USER_KEY") \
	-work-dir="$DIR/cluster/bench/work" -cephfs-endpoint="unix://$DIR/cephfs.sock" -fs-name="$CEPH_FS_NAME" \
	-fs-user="$CEPH_FS_USER_ID" -fs-key-file=<(printf %s "$CEPH_FS_USER_KEY") "$@"
