#!/usr/bin/env bash
# down.sh DIR: stop the e2e cluster in DIR and undo what up.sh and node.sh did to the
# host; remove DIR unless KEEP=1. Stops only processes started for DIR (they carry
# PELAGIC_K8S_DIR=DIR), containers through their own containerd, and unmounts only
# what lies under DIR. Safe to run twice, or on a half-started cluster.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
[[ -d ${1:-} ]] || exit 0
init_dir "$1"
[[ -e $DIR/.pelagic-k8s ]] || die "$DIR was not made by up.sh"

# ps_of_dir: every process started for DIR, whatever recorded it
ps_of_dir() {
	local p
	for p in /proc/[0-9]*; do
		grep -qzxF "PELAGIC_K8S_DIR=$DIR" "$p/environ" 2>/dev/null && echo "${p#/proc/}"
	done
}

# A frozen process (the node-move scenario freezes node 1's Ceph clients) would
# keep everything blocked on its I/O: thaw them all first.
for p in $(ps_of_dir); do kill -CONT "$p" 2>/dev/null; done

# Kubelets first, so that nothing restarts what is stopped next.
for n in 1 2; do stop "kubelet-$n" 20; done

# Containers: through their containerd, so that the shims exit with them.
for n in 1 2; do
	pid_alive "containerd-$n" || continue
	c=(ctr -a "$DIR/node$n/containerd/containerd.sock" -n k8s.io)
	for t in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
	for _ in $(seq 50); do
		[[ -z $("${c[@]}" tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"') ]] && break
		sleep 0.1
	done
	for t in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks rm -f "$t" >/dev/null 2>&1; done
	for k in $("${c[@]}" containers ls -q 2>/dev/null); do "${c[@]}" containers rm "$k" >/dev/null 2>&1; done
	stop "containerd-$n" 20
done

# Volumes the node plugins left: filesystems first (deepest first), then the loop
# devices on image files under DIR, then the rbd-fuse mounts. -c: a path under a
# dead FUSE mount cannot even be looked up.
mounts_under() { # fuse|other
	awk -v d="$DIR/" -v want="$1" 'index($2, d) == 1 && (($3 ~ /^fuse/) == (want == "fuse")) { print $2 }' \
		/proc/self/mounts | sort -r
}
unmount() {
	local m
	while IFS= read -r m; do
		m=$(printf '%b' "$m") # /proc/self/mounts escapes spaces as \040
		umount -c "$m" 2>/dev/null || umount -l -c "$m" 2>/dev/null
	done
}
mounts_under other | unmount
losetup -ln -O NAME,BACK-FILE 2>/dev/null | awk -v d="$DIR/" 'index($2, d) == 1 { print $1 }' |
	while IFS= read -r l; do losetup -d "$l" 2>/dev/null; done
# With the filesystems and loop devices gone, the rbd-fuse daemons hold nothing to
# flush; a fenced one would never answer an unmount: stop them, then unmount.
for p in $(ps_of_dir); do
	[[ $(cat "/proc/$p/comm" 2>/dev/null) == rbd-fuse ]] && kill -KILL "$p" 2>/dev/null
done
mounts_under fuse | unmount

# Everything else recorded (driver, sidecars, control plane; the API server before
# etcd, which it needs to shut down), then any straggler.
for f in "$RUN"/*.pid; do
	n=$(basename "$f" .pid)
	[[ -f $f && $n != kube-apiserver && $n != etcd ]] && stop "$n" 30
done
stop kube-apiserver 30
stop etcd
for _ in $(seq 50); do
	[[ -z $(ps_of_dir) ]] && break
	sleep 0.1
done
for p in $(ps_of_dir); do
	log "killing $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100) (pid $p)"
	kill -KILL "$p" 2>/dev/null
done
mounts_under other | unmount

# Host network: node 2's namespace (its pods' veths go with it), the bridges.
ip netns del "$NODE2_NETNS" 2>/dev/null
ip link del "$NODE2_VETH" 2>/dev/null
for v in $(ip -o link show master pk8s-pods 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
	ip link del "$v" 2>/dev/null
done
ip link del pk8s-pods 2>/dev/null
ip link del "$BRIDGE" 2>/dev/null
# Containers were killed without a CNI DEL: drop libcni's cache of our networks.
rm -f /var/lib/cni/results/"$CLUSTER_NAME"-node[12]-* 2>/dev/null

# The nodes' cgroups, empty now.
for n in 1 2; do
	for d in $(cgroup_dirs "$(cgroup_root "$n")"); do
		[[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
	done
done

if [[ ${KEEP:-0} != 1 ]]; then
	rm -rf "$DIR"
fi
exit 0
