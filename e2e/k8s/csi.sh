#!/usr/bin/env bash
# csi.sh DIR controller | node N: start Pelagic's RBD driver on the e2e cluster in DIR
# as host processes, with the arguments deploy/rbd/ gives its containers, paths moved
# to DIR. "controller" starts the controller with its sidecars (run with the
# service account and RBAC of deploy/rbac.yaml) and the snapshot-controller; "node N"
# starts node N's plugin, which registers itself with node N's kubelet.
#
#   PELAGIC_E2E_FAULT=nodestage  a deliberately broken node plugin: it is told the
#                                kubelet directory is elsewhere, so it refuses every
#                                NodeStage (the e2e must then fail)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
init_dir "$1"
DRIVER=rook-ceph.rbd.csi.ceph.com
CONFIG_DIR=$DIR/ceph-csi-config

# deployed_args FILE CONTAINER: the args of CONTAINER in the workload of deploy/FILE
deployed_args() {
	kubectl create --dry-run=client -o json -f "$ROOT/deploy/$1" |
		jq -r --arg c "$2" '.spec.template.spec.containers[] | select(.name == $c) | .args[]'
}

# host_paths FROM=TO...: rewrite container paths in the args read from stdin
host_paths() {
	local args
	args=$(cat)
	for m in "$@"; do
		args=${args//"${m%%=*}"/"${m#*=}"}
	done
	printf '%s\n' "$args"
}

controller() {
	local cd=$DIR/controller
	mkdir -p "$cd"
	mapfile -t args < <(deployed_args rbd/controller.yaml pelagic |
		host_paths "/csi/=$cd/" "/etc/ceph-csi-config/=$CONFIG_DIR/")
	pick_ports CONTROLLER_HEALTHZ_PORT CONTROLLER_METRICS_PORT
	# the last of a flag given twice wins: the deployed addresses move to loopback
	start pelagic-controller "$ROOT/bin/pelagic" "${args[@]}" --healthz-address="127.0.0.1:$CONTROLLER_HEALTHZ_PORT" \
		--metrics-address="127.0.0.1:$CONTROLLER_METRICS_PORT"
	wait_for "the controller's socket" 30 test -S "$cd/csi.sock"
	alive pelagic-controller

	# The sidecars run as the deployed service account, so its RBAC is what is tested.
	# The token goes straight into the kubeconfig file, never onto a command line.
	local token
	token=$(kubectl -n pelagic create token pelagic-controller --duration=24h)
	printf 'token: %s\n' "$token" | write_kubeconfig "$DIR/sidecars.kubeconfig" pelagic-controller
	local s
	for s in csi-provisioner csi-attacher csi-resizer csi-snapshotter; do
		mapfile -t args < <(deployed_args rbd/controller.yaml "$s" | host_paths "/csi/=$cd/")
		start_supervised "$s" "$BIN/$s" "${args[@]}" --kubeconfig="$DIR/sidecars.kubeconfig" \
			--leader-election-namespace=pelagic --v=3
	done
	# Part of the cluster, not of the driver: it turns VolumeSnapshots into contents.
	start_supervised snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$DIR/admin.kubeconfig" \
		--leader-election=false --v=2
}

node() {
	local n=$1 nd=$DIR/node$1 kubelet_dir
	kubelet_dir=$nd/kubelet
	mapfile -t args < <(deployed_args rbd/node.yaml pelagic |
		host_paths "/var/lib/kubelet=$kubelet_dir" "/var/lib/pelagic=$nd/state" \
			"/etc/ceph-csi-config/=$CONFIG_DIR/" "\$(NODE_ID)=$(node_name "$n")")
	local port=NODE${n}_HEALTHZ_PORT metrics=NODE${n}_METRICS_PORT
	if ((n == 1)); then
		pick_ports "$port" "$metrics"
	else
		printf -v "$port" 9810 # its own network namespace
		printf -v "$metrics" 9812
	fi
	# This kernel has no rbd module: map with rbd-fuse and loop devices.
	args+=(--mounter=fuse --healthz-address="127.0.0.1:${!port}" --metrics-address="127.0.0.1:${!metrics}")
	if [[ ${PELAGIC_E2E_FAULT:-} == nodestage ]]; then
		log "PELAGIC_E2E_FAULT=nodestage: node $n's plugin will refuse every NodeStage"
		args+=(--kubelet-dir="$nd/not-the-kubelet-dir")
	fi
	node_cmd "$n"
	# The daemon host first: the plugin starts rbd-fuse through it, in the node's network.
	local daemon_args
	mapfile -t daemon_args < <(deployed_args rbd/daemonhost.yaml daemon-host | host_paths "/var/lib/pelagic=$nd/state")
	mkdir -p "$nd/state"
	start "pelagic-daemons-$n" "${NODE_CMD[@]}" "$ROOT/bin/pelagic" "${daemon_args[@]}"
	wait_for "node $n's daemon host" 30 test -S "$nd/state/daemons.sock"
	start "pelagic-node-$n" "${NODE_CMD[@]}" "$ROOT/bin/pelagic" "${args[@]}"
	wait_for "node $n's plugin to register with the kubelet" 60 registered "$n"
	wait_for "node $n's plugin /healthz" 30 "${NODE_CMD[@]}" curl -sf "http://127.0.0.1:${!port}/healthz"
	alive "pelagic-node-$n"
}

# registered N: node N's CSINode lists the driver
registered() {
	kubectl get csinode "$(node_name "$1")" -o jsonpath='{.spec.drivers[*].name}' | grep -qw "$DRIVER"
}

case ${2:-} in
controller) controller ;;
node) node "${3:?node number}" ;;
*) die "usage: $0 DIR controller | node N" ;;
esac
