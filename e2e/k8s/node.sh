#!/usr/bin/env bash
# node.sh DIR N: start node N of the e2e cluster in DIR (up.sh starts node 1) and wait
# until it is Ready. A node is a containerd and a kubelet with their own root, state,
# socket, CNI network and cgroup parent. Node 1 uses the host's network, at the
# control plane's address; node N >= 2 has a network namespace of its own, joined to
# the host by a veth pair on $BRIDGE, at its own address.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
init_dir "$1"
N=$2
[[ -f $DIR/env ]] || die "$DIR holds no cluster: run up.sh first"
((N == 1 || N == 2)) || die "nodes are 1 and 2"
NAME=$(node_name "$N")
IP=$(node_ip "$N")
ND=$DIR/node$N
mkdir -p "$ND"/{containerd,cni/net.d,kubelet,pod-logs,state}

phase "node $N: network"
if ((N > 1)) && [[ ! -e /run/netns/$NODE2_NETNS ]]; then
	ip netns add "$NODE2_NETNS"
	ip link add "$NODE2_VETH" type veth peer name eth0 netns "$NODE2_NETNS"
	ip link set "$NODE2_VETH" master "$BRIDGE" up
	ip -n "$NODE2_NETNS" addr add "$IP/24" dev eth0
	ip -n "$NODE2_NETNS" link set eth0 up
	ip -n "$NODE2_NETNS" link set lo up
fi
# Pods reach nothing: their bridge has no gateway and no route leaves it.
cat >"$ND/cni/net.d/10-$CLUSTER_NAME.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CLUSTER_NAME-node$N",
  "plugins": [{
    "type": "bridge", "bridge": "pk8s-pods", "isGateway": false, "ipMasq": false,
    "ipam": {"type": "host-local", "dataDir": "$ND/cni/ipam", "ranges": [[{"subnet": "$(node_pod_cidr "$N")"}]]}
  }]
}
EOF
phase_done

phase "node $N: containerd"
cat >"$ND/containerd/config.toml" <<EOF
version = 2
root = "$ND/containerd/root"
state = "$ND/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$ND/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${E2E_IMAGES[0]}"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # CAP_SYS_RESOURCE is not in this machine's bounding set: no process may lower its
  # oom_score_adj, and every sandbox would fail to start without this.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$ND/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ND/cni/net.d"
    max_conf_num = 1
EOF
SOCK=$ND/containerd/containerd.sock
node_cmd "$N"
start "containerd-$N" "${NODE_CMD[@]}" containerd --config "$ND/containerd/config.toml"
wait_for "containerd of node $N" 30 ctr -a "$SOCK" version
alive "containerd-$N"
for img in "$DIR"/images/*.tar; do
	ctr -a "$SOCK" -n k8s.io images import "$img" >/dev/null
done
phase_done

phase "node $N: kubelet"
"$HERE/pki.sh" "$DIR" "$N"
CG=$(cgroup_root "$N")
for d in $(cgroup_dirs "$CG"); do
	mkdir -p "$d"
	# A new cpuset cgroup starts with no CPUs and no memory nodes: inherit them.
	if [[ -f $d/cpuset.cpus && -z $(<"$d/cpuset.cpus") ]]; then
		cat "${d%/*}/cpuset.cpus" >"$d/cpuset.cpus"
		cat "${d%/*}/cpuset.mems" >"$d/cpuset.mems"
	fi
done
: >"$ND/resolv.conf" # pods get no resolver: there is nothing to resolve
port=KUBELET_PORT_$N healthz=KUBELET_HEALTHZ_PORT_$N
if ((N == 1)); then
	pick_ports "$port" "$healthz"
else
	# its own network namespace: the usual ports are free there
	printf -v "$port" 10250
	printf -v "$healthz" 10248
fi
cat >"$ND/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $IP
port: ${!port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${!healthz}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving-$N.crt
tlsPrivateKeyFile: $PKI/kubelet-serving-$N.key
containerRuntimeEndpoint: unix://$SOCK
# This machine has cgroup v1 only, and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: $CG
failSwapOn: false
# Leave the host's iptables alone: no Service traffic is routed here.
makeIPTablesUtilChains: false
resolvConf: $ND/resolv.conf
podLogsDir: $ND/pod-logs
volumePluginDir: $ND/kubelet/volume-plugins
serializeImagePulls: false
# Pods are synced (and their volumes checked for a pending resize) every 10 s, not
# every minute: the scenarios wait for that.
syncFrequency: 10s
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
EOF
start "kubelet-$N" "${NODE_CMD[@]}" "$BIN/kubelet" --config="$ND/kubelet-config.yaml" \
	--kubeconfig="$DIR/kubelet-$N.kubeconfig" --root-dir="$ND/kubelet" --cert-dir="$ND/kubelet/pki" \
	--hostname-override="$NAME" --node-ip="$IP" --v=2
wait_for "node $NAME to register" 120 kubectl get node "$NAME"
wait_for "node $NAME to be Ready" 120 kubectl wait --for=condition=Ready "node/$NAME" --timeout=1s
alive "kubelet-$N"
phase_done
