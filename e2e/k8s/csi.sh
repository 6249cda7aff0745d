#!/usr/bin/env bash
# csi.sh DIR controller | node N: start Pelagic's RBD and CephFS drivers on the e2e
# cluster in DIR as host processes, with the arguments deploy/rbd/ and deploy/cephfs/
# give their containers, paths moved to DIR. "controller" starts both controllers
# with their sidecars (run with the service account and RBAC of deploy/rbac.yaml) and
# the snapshot-controller; "node N" starts node N's daemon host and both node
# plugins, which register themselves with node N's kubelet.
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
RBD_DRIVER=rook-ceph.rbd.csi.ceph.com
FS_DRIVER=rook-ceph.cephfs.csi.ceph.com
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

# controller TYPE SIDECAR...: the TYPE (rbd, cephfs) controller of deploy/TYPE/ and its sidecars
controller() {
	local type=$1 cd=$DIR/controller-$1 port=CONTROLLER_HEALTHZ_PORT_$1 metrics=CONTROLLER_METRICS_PORT_$1
	shift
	mkdir -p "$cd"
	mapfile -t args < <(deployed_args "$type/controller.yaml" pelagic |
		host_paths "/csi/=$cd/" "/etc/ceph-csi-config/=$CONFIG_DIR/")
	pick_ports "$port" "$metrics"
	# The controller and its sidecars run as the deployed service account, so its RBAC is what
	# is tested: the controller watches CSINodes with it, to know the nodes it publishes to.
	# The token goes straight into the kubeconfig file, never onto a command line.
	if [[ ! -f $DIR/sidecars.kubeconfig ]]; then
		local token
		token=$(kubectl -n pelagic create token pelagic-controller --duration=24h)
		printf 'token: %s\n' "$token" | write_kubeconfig "$DIR/sidecars.kubeconfig" pelagic-controller
	fi
	# the last of a flag given twice wins: the deployed addresses move to loopback
	start "pelagic-controller-$type" "$ROOT/bin/pelagic" "${args[@]}" --healthz-address="127.0.0.1:${!port}" \
		--metrics-address="127.0.0.1:${!metrics}" --kubeconfig="$DIR/sidecars.kubeconfig"
	wait_for "the $type controller's socket" 30 test -S "$cd/csi.sock"
	alive "pelagic-controller-$type"

	local s
	for s in "$@"; do
		mapfile -t args < <(deployed_args "$type/controller.yaml" "$s" | host_paths "/csi/=$cd/")
		start_supervised "$s-$type" "$BIN/$s" "${args[@]}" --kubeconfig="$DIR/sidecars.kubeconfig" \
			--leader-election-namespace=pelagic --v=3
	done
}

controllers() {
	controller rbd csi-provisioner csi-attacher csi-resizer csi-snapshotter
	# CephFS needs no attach (deploy/cephfs/csidriver.yaml).
	controller cephfs csi-provisioner csi-resizer csi-snapshotter
	# Part of the cluster, not of the driver: it turns VolumeSnapshots into contents.
	start_supervised snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$DIR/admin.kubeconfig" \
		--leader-election=false --v=2
}

node() {
	local n=$1 nd=$DIR/node$1
	local port=NODE${n}_HEALTHZ_PORT fsport=NODE${n}_FS_HEALTHZ_PORT
	local metrics=NODE${n}_METRICS_PORT fsmetrics=NODE${n}_FS_METRICS_PORT
	if ((n == 1)); then
		pick_ports "$port" "$fsport" "$metrics" "$fsmetrics"
	else # its own network namespace: the deployed ports
		printf -v "$port" 9810
		printf -v "$fsport" 9811
		printf -v "$metrics" 9812
		printf -v "$fsmetrics" 9813
	fi
	node_cmd "$n"
	# The daemon host first: the plugins start rbd-fuse and ceph-fuse through it, in the
	# node's network.
	local daemon_args
	mapfile -t daemon_args < <(deployed_args rbd/daemonhost.yaml daemon-host | host_paths "/var/lib/pelagic=$nd/state")
	mkdir -p "$nd/state"
	start "pelagic-daemons-$n" "${NODE_CMD[@]}" "$ROOT/bin/pelagic" "${daemon_args[@]}"
	wait_for "node $n's daemon host" 30 test -S "$nd/state/daemons.sock"
	# This kernel has no rbd module: map with rbd-fuse and loop devices.
	node_plugin "$n" rbd "$RBD_DRIVER" "$port" --mounter=fuse --metrics-address="127.0.0.1:${!metrics}"
	# Nor a ceph module: the CephFS plugin finds that and mounts with ceph-fuse.
	node_plugin "$n" cephfs "$FS_DRIVER" "$fsport" --metrics-address="127.0.0.1:${!fsmetrics}"
}

# node_plugin N TYPE DRIVER PORTVAR ARGS...: node N's TYPE plugin of deploy/TYPE/node.yaml
node_plugin() {
	local n=$1 type=$2 driver=$3 port=$4 nd=$DIR/node$1 name=pelagic-node-$1
	shift 4
	[[ $type == rbd ]] || name=pelagic-$type-node-$n
	mapfile -t args < <(deployed_args "$type/node.yaml" pelagic |
		host_paths "/var/lib/kubelet=$nd/kubelet" "/var/lib/pelagic=$nd/state" \
			"/etc/ceph-csi-config/=$CONFIG_DIR/" "\$(NODE_ID)=$(node_name "$n")")
	args+=("$@" --healthz-address="127.0.0.1:${!port}")
	if [[ ${PELAGIC_E2E_FAULT:-} == nodestage ]]; then
		log "PELAGIC_E2E_FAULT=nodestage: node $n's $type plugin will refuse every NodeStage"
		args+=(--kubelet-dir="$nd/not-the-kubelet-dir")
	fi
	start "$name" "${NODE_CMD[@]}" "$ROOT/bin/pelagic" "${args[@]}"
	wait_for "node $n's $type plugin to register with the kubelet" 60 registered "$n" "$driver"
	wait_for "node $n's $type plugin /healthz" 30 "${NODE_CMD[@]}" curl -sf "http://127.0.0.1:${!port}/healthz"
	alive "$name"
}

# registered N DRIVER: node N's CSINode lists DRIVER
registered() {
	local names
	names=$(kubectl get csinode "$(node_name "$1")" -o jsonpath='{.spec.drivers[*].name}') &&
		[[ " $names " == *" $2 "* ]]
}

case ${2:-} in
controller) controllers ;;
node) node "${3:?node number}" ;;
*) die "usage: $0 DIR controller | node N" ;;
esac
