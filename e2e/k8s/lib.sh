# lib.sh: what up.sh, node.sh, down.sh and run.sh share. Sourced, not run.
#
# One e2e Kubernetes lives in one directory, DIR (the scripts' argument):
#   DIR/env            addresses and ports, chosen once (sourced by every script)
#   DIR/bin            the binaries (symlinks into the build cache)
#   DIR/pki, *.kubeconfig, etcd/, logs/, run/*.pid
#   DIR/nodeN/         one node: containerd/, cni/, kubelet/ (its root), state/ (the
#                      node plugin's), cgroup root /pelagic-e2e-<DIR tag>-nodeN
# Host state outside DIR: the bridge $BRIDGE holding the control plane's address,
# node 2's network namespace and veth pair, one cgroup directory per node in each
# cgroup v1 hierarchy, and files named after the CNI network in /var/lib/cni.

# The whole cluster sits in 10.254.0.0/16, an address range nothing else here uses.
NET_PREFIX=10.254
BRIDGE=pk8s0            # host side: the control plane's address, node 2's veth
NODE2_NETNS=pk8s-node2  # node 2's network namespace
NODE2_VETH=pk8s-n2      # host end of node 2's veth pair
SERVICE_CIDR=$NET_PREFIX.128.0/24
CLUSTER_NAME=pelagic-e2e
E2E_IMAGES=(registry.k8s.io/pause:3.10 docker.io/library/busybox:1.35)

# node_ip N, node_name N, node_pod_cidr N
node_ip() { echo "$NET_PREFIX.0.$1"; }
node_name() { echo "e2e-node-$1"; }
node_pod_cidr() { echo "$NET_PREFIX.$1.0/24"; }

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() {
	log "FATAL: $*"
	exit 1
}

# init_dir DIR: make DIR absolute and set the paths every script uses.
init_dir() {
	[[ -n ${1:-} ]] || die "usage: $0 DIR"
	mkdir -p "$1"
	DIR=$(cd "$1" && pwd -P)
	[[ $DIR != / ]] || die "refusing to use /"
	BIN=$DIR/bin
	LOGS=$DIR/logs
	RUN=$DIR/run
	PKI=$DIR/pki
	export KUBECONFIG=$DIR/admin.kubeconfig
	if [[ -f $DIR/env ]]; then
		# shellcheck disable=SC1091
		source "$DIR/env"
	fi
}

# Phases: each prints and records its duration in DIR/timings.
phase() {
	PHASE=$1
	PHASE_START=$(date +%s%N)
	log "== $PHASE"
}
phase_done() {
	local ms=$((($(date +%s%N) - PHASE_START) / 1000000))
	printf '%-30s %6d.%01ds\n' "$PHASE" $((ms / 1000)) $((ms % 1000 / 100)) | tee -a "$DIR/timings" >&2
}

# claim_network: create the bridge that holds the control plane's address, refusing
# when another e2e cluster already has it (one per machine: the addresses are fixed).
claim_network() {
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		[[ -f $DIR/env ]] || die "$BRIDGE exists: another e2e cluster runs on this machine (stop it with" \
			"e2e/k8s/down.sh ITS_DIR; if its directory is gone: ip link del $BRIDGE)"
	else
		ip link add "$BRIDGE" type bridge
	fi
	: >>"$DIR/env" # this cluster's from now on
	ip link set "$BRIDGE" up
	# replace, not add: up.sh claims again what run.sh claimed, and replace is idempotent.
	ip addr replace "$(node_ip 1)/24" dev "$BRIDGE"
}

# port_free PORT: nothing listens on PORT, on any address (of this network namespace).
port_free() { [[ -z $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }

# pick_ports VAR... : give each VAR a free TCP port, distinct from each other, and
# record them in DIR/env (ports are chosen once per DIR).
pick_ports() {
	local p=${PORT_BASE:-23700} v
	for v in "$@"; do
		[[ -n ${!v:-} ]] && continue
		while ! port_free "$p"; do p=$((p + 1)); done
		printf -v "$v" %s "$p"
		echo "$v=$p" >>"$DIR/env"
		p=$((p + 1))
	done
}

# pid_alive NAME: the process recorded as NAME runs and was started for this DIR.
pid_alive() {
	local f=$RUN/$1.pid p
	[[ -f $f ]] || return 1
	p=$(<"$f")
	grep -qzxF "PELAGIC_K8S_DIR=$DIR" "/proc/$p/environ" 2>/dev/null
}

# start NAME CMD...: run a daemon in a session of its own, log in LOGS/NAME.log.
# Every process started here carries PELAGIC_K8S_DIR=DIR in its environment, which
# is how down.sh knows it (never by name).
start() {
	local n=$1
	shift
	if pid_alive "$n"; then
		log "$n already runs"
		return
	fi
	mkdir -p "$LOGS" "$RUN"
	PELAGIC_K8S_DIR=$DIR setsid "$@" >>"$LOGS/$n.log" 2>&1 </dev/null &
	echo $! >"$RUN/$n.pid"
}

# start_supervised NAME CMD...: like start, but restart CMD whenever it exits, as a
# pod's restartPolicy would (the CSI sidecars exit when they lose the driver).
start_supervised() {
	local n=$1
	shift
	start "$n" bash -c 'while :; do "$@"; echo "exited with $?, restarting"; sleep 1; done' supervise "$@"
}

# stop NAME [SECONDS]: SIGTERM the process group, SIGKILL what is left after SECONDS.
stop() {
	local n=$1 t=${2:-15} p i
	pid_alive "$n" || {
		rm -f "$RUN/$n.pid"
		return 0
	}
	p=$(<"$RUN/$n.pid")
	kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
	for ((i = 0; i < t * 10; i++)); do
		pid_alive "$n" || break
		sleep 0.1
	done
	if pid_alive "$n"; then
		log "$n (pid $p) did not stop in ${t}s: SIGKILL"
		kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null
	fi
	rm -f "$RUN/$n.pid"
}

# wait_for DESCRIPTION SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
	local what=$1 t=$2 i
	shift 2
	for ((i = 0; i < t * 5; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	die "timed out after ${t}s waiting for $what"
}

# alive NAME: die with the end of NAME's log when it is not running.
alive() {
	pid_alive "$1" || die "$1 exited; the end of $LOGS/$1.log:
$(tail -n 20 "$LOGS/$1.log" 2>/dev/null)"
}

kubectl() { "$BIN/kubectl" "$@"; }

# write_kubeconfig FILE USER: a kubeconfig (mode 600) for the API server as USER,
# whose credentials, the lines under "user:", come on stdin.
write_kubeconfig() {
	(
		umask 077
		cat <<EOF >"$1"
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: https://$(node_ip 1):$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
$(sed 's/^/    /')
contexts:
- name: default
  context: {cluster: $CLUSTER_NAME, user: $2}
current-context: default
EOF
	)
}

# node_cmd N: set NODE_CMD to the prefix that runs a command in node N's network
# namespace (node 1 is the host's). Only the network namespace: the node's mounts
# must stay visible to its kubelet and its containers.
node_cmd() {
	NODE_CMD=()
	if [[ $1 != 1 ]]; then
		NODE_CMD=(nsenter "--net=/run/netns/$NODE2_NETNS" --)
	fi
}

# cgroup_root N: node N's cgroup parent. Its own, so that its kubelet never takes
# another kubelet's pods for orphans.
cgroup_root() { echo "/pelagic-e2e-$(basename "$DIR" | tr -c 'a-zA-Z0-9\n' -)-node$1"; }

# cgroup_dirs CGROUP: CGROUP's directory in every cgroup v1 hierarchy.
cgroup_dirs() {
	local h
	for h in /sys/fs/cgroup/*/; do
		[[ -e $h/cgroup.procs && ${h%/} != */unified ]] && echo "${h%/}$1"
	done
}
