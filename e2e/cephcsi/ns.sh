# Runs as root in a fresh mount namespace (unshare --mount) whose copies of the host's mounts are
# slaves: prepares the paths ceph-csi hard-codes, all in memory, then becomes ceph-csi. Arguments:
# DIR BINARY CEPHCSI-ARGS...
# DIR holds config.json, an empty ns/ (the namespace's tmpfs) and shared/ (the CSI socket, staging
# paths: visible at the same path on the host).
set -eu
dir=$1 bin=$2
shift 2
ns=$dir/ns
# CEPHCSI_SHARED=true: the namespace kept the caller's propagation, so that the mounts ceph-csi
# makes in shared/ (a shared mount of its own) reach the caller; nothing else may. Slaves, not
# private copies: the host's unmounts must still reach them.
if [ "${CEPHCSI_SHARED:-false}" = true ]; then
	awk '{print $5}' /proc/self/mountinfo | while read -r m; do
		# A mount another process removes meanwhile leaves this copy too: skip it.
		case $m in "$dir/shared" | "$dir/shared/"*) ;; *) mount --make-slave "$m" 2>/dev/null || ! mountpoint -q "$m" ;; esac
	done
fi
# The copies of the host's private mounts stay after the host unmounts them: a copy of a
# filesystem on a loop, rbd or nbd device, or of a FUSE or CephFS mount, would keep that device
# busy or that filesystem alive. Drop them, deepest first (the mount point, then the type and
# source after the "-" field), but those under shared/.
awk '{ for (i = 7; $i != "-"; i++) {}; print $5, $(i + 1), $(i + 2) }' /proc/self/mountinfo | sort -r -k1,1 |
	while read -r m type src; do
		case $m in "$dir/shared" | "$dir/shared/"*) continue ;; esac
		case $type:$src in
		fuse*:* | ceph:* | *:/dev/loop* | *:/dev/rbd* | *:/dev/nbd*) umount -l "$m" 2>/dev/null || true ;;
		esac
	done
mount -t tmpfs -o mode=0755 cephcsi-ns "$ns"
mkdir -p "$ns/etc/upper/ceph-csi-config" "$ns/etc/work" "$ns/tmp/csi/keys" "$ns/tmp/bin"
chmod 1777 "$ns/tmp"
cp "$dir/config.json" "$ns/etc/upper/ceph-csi-config/config.json"
# Its RBD node server runs `modprobe rbd` at start and exits when that fails.
printf '#!/bin/sh\nexit 0\n' >"$ns/tmp/bin/modprobe"
chmod 0755 "$ns/tmp/bin/modprobe"
: >"$ns/tmp/bin/cephcsi"
mount --bind "$bin" "$ns/tmp/bin/cephcsi"
# The tmpfs that becomes /tmp hides DIR when DIR is under /tmp: bind shared/ back at its path.
case $dir in /tmp/*)
	mkdir -p "$ns/tmp${dir#/tmp}/shared"
	mount --bind "$dir/shared" "$ns/tmp${dir#/tmp}/shared"
	;;
esac
mount -t overlay cephcsi-etc -o "lowerdir=/etc,upperdir=$ns/etc/upper,workdir=$ns/etc/work" /etc
# ceph-csi writes /etc/ceph/ceph.conf and an empty keyring: none of the host's may show through.
mkdir -p /etc/ceph
mount -t tmpfs -o mode=0755 cephcsi-etc-ceph /etc/ceph
mount --rbind "$ns/tmp" /tmp
PATH=/tmp/bin:$PATH
export PATH
exec /tmp/bin/cephcsi "$@"
