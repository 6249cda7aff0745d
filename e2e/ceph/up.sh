#!/usr/bin/env bash
# up.sh DIR: bring up a throwaway one-node Ceph Pacific cluster in DIR (1 mon, 1 mgr,
# 1 memstore OSD, 1 MDS, CephFS "cephfs", RBD pool "rbd", cephx on, restricted CSI
# users client.csi-rbd and client.csi-cephfs). Everything (conf, data, logs, sockets,
# pid files, keyrings) lives in DIR; nothing goes to /etc/ceph or /var/lib/ceph.
#
#   CEPH_BIND_ADDR=IP   address every daemon binds to (default 127.0.0.1)
#   CEPH_FS_NAME=NAME, CEPH_FS_DATA_POOL=POOL  the filesystem and its data pool
#                       (default cephfs and cephfs_data)
#   UP_TIMEOUT=SECONDS  how long to wait for the cluster to become usable (default 120)
#   CEPH_OWNER_PID=PID  tear the cluster down (down.sh DIR) once process PID has exited
#
# Idempotent: if DIR already holds a running cluster, prints its info and exits 0; if it
# holds a dead one (made by this script), wipes and recreates it. Stop with down.sh DIR.
# Writes DIR/cluster.env (KEY=value) and DIR/cluster.json; see setup.py write_info.
#
# Client command lines verified with the restricted users and no conf file at all
# (MON=$CEPH_MONITORS, "v1:IP:PORT"; KEYFILE holds only the base64 key, e.g.
# $CEPH_RBD_KEYFILE / $CEPH_FS_KEYFILE; "--key KEY" works too but shows in ps):
#   rbd-fuse -c /dev/null -m MON --id csi-rbd --keyfile KEYFILE -p rbd MNT
#     (images appear as MNT/IMAGE; losetup --find --show MNT/IMAGE gives a block device;
#     "-r IMAGE" exposes one image only; unmount with umount MNT: fusermount is not installed)
#   ceph-fuse -c /dev/null -m MON --id csi-cephfs --keyfile KEYFILE -r /volumes/GROUP/SUBVOL/UUID MNT
#     (-r = --client_mountpoint, from `ceph fs subvolume getpath`; subvolume quota is enforced)
#   With "-c DIR/ceph.conf --id USER" no key option is needed: the conf's keyring
#   pattern finds DIR/keyring/ceph.client.USER.keyring.
# A plain IP:PORT on a non-default port makes clients try msgr2 first and log one harmless
# "is using msgr V1 protocol" line to stderr before falling back to v1.
set -euo pipefail

T0=$(date +%s%N)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3

if [[ $# -ne 1 || -z $1 ]]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)
if [[ $DIR == / ]]; then
	echo "up.sh: refusing to use / as cluster dir" >&2
	exit 2
fi
CONF=$DIR/ceph.conf
BIND=${CEPH_BIND_ADDR:-127.0.0.1}
UP_TIMEOUT=${UP_TIMEOUT:-120}

elapsed() {
	local ms=$((($(date +%s%N) - T0) / 1000000))
	printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# --- packages -----------------------------------------------------------------
PKGS=(ceph-mon ceph-osd ceph-mgr ceph-mds ceph-common rbd-fuse ceph-fuse rbd-nbd
	librados-dev librbd-dev libcephfs-dev xfsprogs e2fsprogs iproute2 util-linux)
missing=()
for p in "${PKGS[@]}" python3-rados python3-rbd; do
	if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != *'ok installed'* ]]; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	echo "up.sh: installing missing packages: ${missing[*]}" >&2
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${PKGS[@]}" python3-rados python3-rbd >&2
fi

# --- already there? ------------------------------------------------------------
# alive PID: the process exists and was started with this cluster's conf
alive() {
	[[ -n ${1:-} ]] && grep -qzF -- "$CONF" "/proc/$1/cmdline" 2>/dev/null
}

if [[ -f $DIR/cluster.env ]]; then
	# shellcheck disable=SC1091
	(
		source "$DIR/cluster.env"
		for p in "$CEPH_MON_PID" "$CEPH_MGR_PID" "$CEPH_OSD_PID" "$CEPH_MDS_PID"; do
			alive "$p" || exit 1
		done
		timeout 15 ceph --conf "$CONF" --connect-timeout 5 -s >/dev/null 2>&1
	) && {
		echo "up.sh: cluster in $DIR is already running"
		cat "$DIR/cluster.env"
		echo "cluster up in $(elapsed) (reused)"
		exit 0
	}
fi

if [[ -n $(ls -A "$DIR") ]]; then
	if [[ ! -e $DIR/.pelagic-ceph ]]; then
		echo "up.sh: $DIR is not empty and was not made by up.sh; refusing to wipe it" >&2
		exit 1
	fi
	echo "up.sh: $DIR holds a dead or broken cluster: wiping it" >&2
	KEEP=1 "$HERE/down.sh" "$DIR" >&2
	find "$DIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi

# --- bootstrap -----------------------------------------------------------------
mkdir -p "$DIR"/{mon/ceph-a,mgr/ceph-x,osd/ceph-0,mds/ceph-a,run,log,keyring,crash}
touch "$DIR/.pelagic-ceph"

ok=0
mkfs_pid=
started=()
cleanup() {
	((ok)) && return
	echo "up.sh: bring-up FAILED after $(elapsed); stopping the daemons it started" >&2
	local f pid pids=("${started[@]}")
	[[ -n $mkfs_pid ]] && pids+=("$mkfs_pid")
	for f in "$DIR"/run/*.pid; do
		[[ -f $f ]] && pids+=("$(<"$f")")
	done
	for pid in "${pids[@]}"; do
		alive "$pid" && kill -9 "$pid" 2>/dev/null || true
	done
	for f in "$DIR"/log/*.log "$DIR"/log/*.out; do
		[[ -s $f ]] || continue
		echo "---- tail $f" >&2
		tail -n 15 "$f" >&2
	done
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# CEPH_OWNER_PID: a watchdog runs down.sh DIR once that process is gone (tests use it
# so that a killed test binary leaves no cluster behind); down.sh stops the watchdog.
if [[ -n ${CEPH_OWNER_PID:-} ]]; then
	setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$4/down.sh" "$2"' \
		watchdog "$CEPH_OWNER_PID" "$DIR" "$CONF" "$HERE" </dev/null >>"$DIR/log/watchdog.out" 2>&1 &
	echo $! >"$DIR/run/watchdog.pid"
fi

"$PY" "$HERE/setup.py" prepare "$DIR" "$BIND"
# shellcheck disable=SC1091
source "$DIR/prep.env"

monmaptool --create --fsid "$FSID" --addv a "[v2:$BIND:$MON_V2_PORT,v1:$BIND:$MON_V1_PORT]" \
	"$DIR/monmap" >/dev/null
ceph-mon --conf "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring/mkfs.keyring" \
	>"$DIR/log/mon-mkfs.out" 2>&1

# start TYPE ID: run a daemon in the foreground of its own session, stdio to DIR/log
start() {
	setsid "ceph-$1" -f --conf "$CONF" -i "$2" </dev/null >>"$DIR/log/$1.$2.out" 2>&1 &
	started+=($!)
}

start mon a
start mgr x
start mds a
ceph-osd --conf "$CONF" --mkfs -i 0 --osd-uuid "$OSD_UUID" </dev/null >"$DIR/log/osd-mkfs.out" 2>&1 &
mkfs_pid=$!

"$PY" "$HERE/setup.py" configure "$DIR"
wait "$mkfs_pid"
start osd 0
"$PY" "$HERE/setup.py" wait "$DIR" "$UP_TIMEOUT"

ok=1
cat "$DIR/cluster.env"
echo "cluster up in $(elapsed)"
