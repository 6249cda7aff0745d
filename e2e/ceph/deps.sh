#!/usr/bin/env bash
# deps.sh [PACKAGE...]: install the Debian packages that building against
# librados/librbd and running the local cluster need, and the PACKAGEs given
# (e2e/vm adds what its guest needs), when any is missing.
set -euo pipefail
PKGS=(ceph-mon ceph-osd ceph-mgr ceph-mds ceph-common rbd-fuse ceph-fuse rbd-nbd
	librados-dev librbd-dev libcephfs-dev python3-rados python3-rbd
	xfsprogs e2fsprogs iproute2 util-linux fuse3 gcc "$@")
missing=()
for p in "${PKGS[@]}"; do
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *'ok installed'* ]] || missing+=("$p")
done
((${#missing[@]})) || exit 0
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
