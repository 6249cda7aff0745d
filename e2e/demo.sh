#!/usr/bin/env bash
# demo.sh: the main job. Starts a local Ceph cluster, the Pelagic RBD driver
# (controller and node in one process, fuse mapper) and walks a volume
# through its life over CSI; then the CephFS driver on two nodes (node a:
# controller and node in one process; node b: a node plugin of its own, with
# a state of its own) and walks a shared volume through its life. Each step
# is printed with its time.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${DEMO_DIR:-$(mktemp -d /tmp/pelagic-demo.XXXXXX)}
cleanup() {
	for pid in ${DRIVER_PID:-} ${FS_A_PID:-} ${FS_B_PID:-}; do
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	done
	bash "$ROOT/e2e/ceph/down.sh" "$DIR/cluster" >/dev/null 2>&1 || true
	[[ -n ${DEMO_DIR:-} ]] || rm -rf "$DIR"
}
trap cleanup EXIT

bash "$ROOT/e2e/ceph/up.sh" "$DIR/cluster" | tail -n 1
# shellcheck disable=SC1091
source "$DIR/cluster/cluster.env"
cat >"$DIR/config.json" <<JSON
[{"clusterID": "demo", "monitors": ["$CEPH_MONITORS"], "rbd": {}, "cephFS": {"subvolumeGroup": "csi"}}]
JSON
# Node state and volume paths live inside the cluster directory, so down.sh
# unmounts and unmaps whatever a failed run leaves before it stops the cluster.
"$ROOT/bin/pelagic" --type=rbd --controller --node --nodeid=demo-node --mounter=fuse \
	--endpoint="unix://$DIR/csi.sock" --config="$DIR/config.json" --state-dir="$DIR/cluster/demo/state" \
	>"$DIR/driver.log" 2>&1 &
DRIVER_PID=$!
echo "driver started (pid $DRIVER_PID, log $DIR/driver.log)"
"$ROOT/bin/pelagic" --type=cephfs --controller --node --nodeid=node-a \
	--endpoint="unix://$DIR/cephfs-a.sock" --config="$DIR/config.json" --state-dir="$DIR/cluster/demo/state-a" \
	>"$DIR/cephfs-a.log" 2>&1 &
FS_A_PID=$!
"$ROOT/bin/pelagic" --type=cephfs --node --nodeid=node-b \
	--endpoint="unix://$DIR/cephfs-b.sock" --config="$DIR/config.json" --state-dir="$DIR/cluster/demo/state-b" \
	>"$DIR/cephfs-b.log" 2>&1 &
FS_B_PID=$!
echo "CephFS drivers started (node a: pid $FS_A_PID, log $DIR/cephfs-a.log; node b: pid $FS_B_PID, log $DIR/cephfs-b.log)"
cd "$ROOT"
go run -tags pacific ./e2e/demo --endpoint="unix://$DIR/csi.sock" --cluster-id=demo \
	--pool="$CEPH_POOL" --user="$CEPH_RBD_USER_ID" --key-file=<(printf %s "$CEPH_RBD_USER_KEY") \
	--work-dir="$DIR/cluster/demo/work" --cephfs-endpoints="unix://$DIR/cephfs-a.sock,unix://$DIR/cephfs-b.sock" \
	--fs-name="$CEPH_FS_NAME" --fs-user="$CEPH_FS_USER_ID" --fs-key-file=<(printf %s "$CEPH_FS_USER_KEY")
