#!/usr/bin/env bash
# packages.sh: install what an e2e node needs and lacks: the container runtime, etcd,
# the tools the scripts use, and the driver's runtime packages, the same list the image
# installs (deploy/runtime-packages.txt).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mapfile -t runtime < <(grep -v '^\s*\(#\|$\)' "$HERE/../../deploy/runtime-packages.txt")
exec bash "$HERE/../ceph/deps.sh" containerd runc containernetworking-plugins etcd-server busybox-static \
	iproute2 util-linux openssl curl jq "${runtime[@]}"
