#!/usr/bin/env bash
# down.sh DIR: stop a cluster made by up.sh DIR and remove DIR (KEEP=1 keeps the files).
# Stops only the daemons up.sh recorded (cluster.env and DIR/run/*.pid, each checked to be
# a process started with DIR/ceph.conf): SIGTERM, up to ~10 s, then SIGKILL. Unmounts any
# mount under DIR first. Safe on a missing or already stopped DIR.
set -euo pipefail

if [[ $# -ne 1 || -z $1 ]]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
if [[ ! -d $1 ]]; then
	exit 0
fi
DIR=$(cd "$1" && pwd -P)
if [[ $DIR == / ]]; then
	echo "down.sh: refusing to use /" >&2
	exit 2
fi
CONF=$DIR/ceph.conf

alive() {
	[[ -n ${1:-} ]] && grep -qzF -- "$CONF" "/proc/$1/cmdline" 2>/dev/null
}

# Mounts under DIR (rbd-fuse, ceph-fuse, filesystems on loop devices backed by rbd-fuse
# files), newest first; non-fuse ones first, then loop devices backed by files under DIR,
# then the fuse mounts (while the cluster still runs, so the clients can shut down cleanly).
mounts_under() { # [fuse|other]
	awk -v d="$DIR/" -v want="$1" 'index($2, d) == 1 && (($3 ~ /^fuse/) == (want == "fuse")) { print $2 }' \
		/proc/self/mounts | tac
}
unmount_all() {
	local m
	while IFS= read -r m; do
		m=$(printf '%b' "$m") # /proc/self/mounts escapes spaces as \040
		umount "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
}
# rbd-fuse / ceph-fuse processes that are clients of this cluster (command line mentions DIR/
# or the monitor address, or names a conf file that does, as the driver's fuse mapper writes):
# given time to exit after their unmount, killed if they hang. A client left running after its
# cluster stops would block every I/O on its device forever.
MONS=
[[ -f $DIR/cluster.env ]] && MONS=$(sed -n 's/^CEPH_MONITORS=//p' "$DIR/cluster.env")
conf_names_us() { # "cmdline": its -c/--conf file holds this cluster's monitor address
	[[ -n $MONS ]] || return 1
	local prev="" a
	for a in $1; do
		if [[ $prev == -c || $prev == --conf ]] && [[ -r $a ]] && grep -qF -- "${MONS#v1:}" "$a"; then
			return 0
		fi
		prev=$a
	done
	return 1
}
fuse_clients() {
	local p c
	for p in /proc/[0-9]*; do
		c=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		[[ $c == *rbd-fuse\ * || $c == *ceph-fuse\ * ]] || continue
		if [[ $c == *"$DIR/"* || $c == *" $DIR "* || (-n $MONS && $c == *"$MONS "*) ]] || conf_names_us "$c"; then
			echo "${p#/proc/}"
		fi
	done
}
mapfile -t clients < <(fuse_clients)

mounts_under other | unmount_all
if command -v losetup >/dev/null; then
	losetup -ln -O NAME,BACK-FILE 2>/dev/null | awk -v d="$DIR/" 'index($2, d) == 1 { print $1 }' |
		while IFS= read -r l; do losetup -d "$l" 2>/dev/null || true; done
fi
mounts_under fuse | unmount_all

client_alive() { [[ -e /proc/$1/cmdline && -n $(tr -d '\0' 2>/dev/null <"/proc/$1/cmdline") ]]; }
for _ in $(seq 50); do
	left=0
	for p in "${clients[@]}"; do client_alive "$p" && left=1; done
	((left)) || break
	sleep 0.1
done

# The recorded daemons: cluster.env, plus DIR/run/*.pid (also covers a half-finished up.sh
# and its watchdog). Two waves: everything but the mon first (the OSD and MDS shut down
# faster while the mon still answers), then the mon.
mon=() rest=()
record() { # PID ROLE
	[[ $1 =~ ^[0-9]+$ ]] && alive "$1" || return 0
	if [[ $2 == mon ]]; then mon+=("$1"); else rest+=("$1"); fi
}
if [[ -f $DIR/cluster.env ]]; then
	while IFS='=' read -r k v; do
		case $k in
		CEPH_MON_PID) record "$v" mon ;;
		CEPH_MGR_PID | CEPH_OSD_PID | CEPH_MDS_PID) record "$v" other ;;
		esac
	done <"$DIR/cluster.env"
fi
for f in "$DIR"/run/*.pid; do
	[[ -f $f ]] || continue
	role=other
	[[ $(basename "$f") == mon.* ]] && role=mon
	record "$(<"$f")" "$role"
done

# stop PID...: SIGTERM, up to 10 s, then SIGKILL
stop() {
	(($#)) || return 0
	kill -TERM "$@" 2>/dev/null || true
	local p left
	for _ in $(seq 100); do
		left=0
		for p in "$@"; do alive "$p" && left=1; done
		((left)) || return 0
		sleep 0.1
	done
	for p in "$@"; do
		alive "$p" && kill -KILL "$p" 2>/dev/null || true
	done
}
# a test may have frozen the mon (cephtest FreezeMon) and died before thawing it
((${#mon[@]})) && { kill -CONT "${mon[@]}" 2>/dev/null || true; }
stop "${rest[@]}"
stop "${mon[@]}"

for p in "${clients[@]}"; do
	client_alive "$p" && kill -KILL "$p" 2>/dev/null || true
done

if [[ ${KEEP:-0} != 1 ]]; then
	rm -rf "$DIR"
fi
