#!/usr/bin/env bash
# run.sh [DIR]: the Kubernetes end-to-end test (make e2e). Brings up a one-node
# Kubernetes (up.sh) and a local Ceph cluster (e2e/ceph/up.sh) in DIR, deploys
# Pelagic's RBD and CephFS drivers from deploy/ (driver and sidecars as host processes), runs the
# scenarios (e2e/k8s/scenarios), prints their table, and tears everything down.
# Exits non-zero when anything fails.
#
#   DIR       default: a new /tmp/pelagic-k8s-XXXXXX
#   KEEP=1    leave the clusters running (stop them with: e2e/k8s/down.sh DIR and
#             e2e/ceph/down.sh DIR/ceph)
#   SCENARIOS comma-separated scenario numbers to run (default: all)
#   PELAGIC_E2E_FAULT=nodestage  break the node plugin on purpose (see csi.sh)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
init_dir "${1:-$(mktemp -d /tmp/pelagic-k8s-XXXXXX)}"
CEPH_DIR=$DIR/ceph
T0=$(date +%s)
if [[ -n $(ls -A "$DIR") && ! -e $DIR/.pelagic-k8s ]]; then
	die "$DIR is not empty and was not made by run.sh"
fi
touch "$DIR/.pelagic-k8s"

teardown() {
	local rc=$?
	if [[ ${KEEP:-0} == 1 ]]; then
		log "KEEP=1: the clusters stay up in $DIR (KUBECONFIG=$DIR/admin.kubeconfig)"
		return
	fi
	# Logs of a failed run survive the cluster, for CI to show.
	if ((rc != 0)) && [[ -d $LOGS ]]; then
		rm -rf "$DIR.logs" && cp -r "$LOGS" "$DIR.logs" && log "logs kept in $DIR.logs"
	fi
	# Kubernetes first: its volumes' Ceph clients leave while Ceph still answers.
	KEEP=1 bash "$HERE/down.sh" "$DIR"
	bash "$ROOT/e2e/ceph/down.sh" "$CEPH_DIR"
	rm -rf "$DIR"
	log "e2e took $(($(date +%s) - T0))s"
}
trap teardown EXIT

phase "build the driver, the scenarios and the sidecars"
make -C "$ROOT" --no-print-directory build >/dev/null
(cd "$ROOT" && go build -tags pacific -o "$BIN/e2e-scenarios" ./e2e/k8s/scenarios)
"$HERE/build.sh" "$BIN" csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller
phase_done

# Ceph comes up while Kubernetes does: it needs only the bridge address to bind to.
mkdir -p "$LOGS"
claim_network
# The filesystem has the names Rook's rook-cephfs class gives, so deploy/ applies as it is.
CEPH_FS_NAME=myfs CEPH_FS_DATA_POOL=myfs-replicated CEPH_BIND_ADDR=$(node_ip 1) bash "$ROOT/e2e/ceph/up.sh" "$CEPH_DIR" >"$LOGS/ceph-up.log" 2>&1 &
ceph_up=$!

"$HERE/up.sh" "$DIR"

phase "ceph"
wait "$ceph_up" || die "the Ceph cluster did not start: $(tail -n 30 "$LOGS/ceph-up.log")"
# cluster.env also holds keys: read only what is needed, keys stay in their files.
cluster_env() { sed -n "s/^$1=//p" "$CEPH_DIR/cluster.env"; }
CEPH_MONITORS=$(cluster_env CEPH_MONITORS)
CEPH_RBD_USER_ID=$(cluster_env CEPH_RBD_USER_ID)
CEPH_RBD_KEYFILE=$(cluster_env CEPH_RBD_KEYFILE)
CEPH_FS_USER_ID=$(cluster_env CEPH_FS_USER_ID)
CEPH_FS_KEYFILE=$(cluster_env CEPH_FS_KEYFILE)
ceph() { command ceph --conf "$CEPH_DIR/ceph.conf" "$@"; }
# Rook's class names the pool replicapool.
ceph osd pool create replicapool 8 8 >/dev/null 2>&1
ceph osd pool application enable replicapool rbd >/dev/null
rbd --conf "$CEPH_DIR/ceph.conf" pool init replicapool
mkdir -p "$DIR/ceph-csi-config"
cat >"$DIR/ceph-csi-config/config.json" <<EOF
[{"clusterID": "rook-ceph", "monitors": ["$CEPH_MONITORS"], "rbd": {}, "cephFS": {"subvolumeGroup": "csi"}}]
EOF
phase_done

phase "deploy"
crds=$(cd "$HERE/modules/attacher-snapshotter" &&
	go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)/config/crd
# The snapshot-controller wants the group snapshot CRDs too.
for f in "$crds"/*snapshot*.yaml; do kubectl apply --server-side -f "$f" >/dev/null; done
kubectl wait --for=condition=Established --timeout=60s --all crd >/dev/null
# What a Rook cluster has: its namespace, and the secrets its classes name (keys from
# files, never on a command line).
kubectl apply -f "$ROOT/deploy/namespace.yaml" >/dev/null
kubectl create namespace rook-ceph >/dev/null
for s in rook-csi-rbd-provisioner rook-csi-rbd-node; do
	kubectl -n rook-ceph create secret generic "$s" --from-literal=userID="$CEPH_RBD_USER_ID" \
		--from-file=userKey="$CEPH_RBD_KEYFILE" >/dev/null
done
# Rook's CephFS secrets name the user adminID/adminKey.
for s in rook-csi-cephfs-provisioner rook-csi-cephfs-node; do
	kubectl -n rook-ceph create secret generic "$s" --from-literal=adminID="$CEPH_FS_USER_ID" \
		--from-file=adminKey="$CEPH_FS_KEYFILE" >/dev/null
done
# Everything deploy/ holds but the workloads (the driver runs on the host here).
for f in rbac.yaml ceph-csi-config.yaml rbd/csidriver.yaml rbd/storageclass.yaml rbd/snapshotclass.yaml \
	cephfs/csidriver.yaml cephfs/storageclass.yaml cephfs/snapshotclass.yaml; do
	kubectl apply -f "$ROOT/deploy/$f" >/dev/null
done
phase_done

phase "driver"
"$HERE/csi.sh" "$DIR" controller
"$HERE/csi.sh" "$DIR" node 1
phase_done

log "up in $(($(date +%s) - T0))s; running the scenarios"
"$BIN/e2e-scenarios" -dir "$DIR" -root "$ROOT" ${SCENARIOS:+-only "$SCENARIOS"}
