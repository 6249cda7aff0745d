#!/usr/bin/env bash
# build.sh OUTDIR [BINARY...]: make the e2e cluster's binaries available in OUTDIR
# (as symlinks), building only those missing from the cache.
#
# Every binary comes from a pinned Go module in modules/ (go.mod and go.sum hold the
# versions). A module's binaries are cached in $PELAGIC_K8S_CACHE/bin/MODULE-KEY, KEY
# hashing its go.mod, go.sum, the Go version and the link flags: a changed pin builds
# again, an unchanged one costs nothing. All builds share one Go build cache,
# $PELAGIC_K8S_CACHE/go-build, and are -trimpath, static and stripped.
#
#   PELAGIC_K8S_CACHE  default ${XDG_CACHE_HOME:-$HOME/.cache}/pelagic-k8s
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${PELAGIC_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pelagic-k8s}

if (($# < 1)); then
	echo "usage: $0 OUTDIR [BINARY...]" >&2
	exit 2
fi
OUT=$1
shift

# binary module package (module path: the part of package before /cmd/)
TABLE="
kube-apiserver      kubernetes            k8s.io/kubernetes/cmd/kube-apiserver
kube-controller-manager kubernetes        k8s.io/kubernetes/cmd/kube-controller-manager
kube-scheduler      kubernetes            k8s.io/kubernetes/cmd/kube-scheduler
kubelet             kubernetes            k8s.io/kubernetes/cmd/kubelet
kubectl             kubernetes            k8s.io/kubernetes/cmd/kubectl
csi-provisioner     provisioner-resizer   github.com/kubernetes-csi/external-provisioner/v5/cmd/csi-provisioner
csi-resizer         provisioner-resizer   github.com/kubernetes-csi/external-resizer/cmd/csi-resizer
csi-attacher        attacher-snapshotter  github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher
csi-snapshotter     attacher-snapshotter  github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
snapshot-controller attacher-snapshotter  github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
"
if (($# == 0)); then
	set -- $(awk 'NF == 3 { print $1 }' <<<"$TABLE")
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$CACHE/go-build
# The module proxy serves this module but the checksum database does not know it;
# go.sum holds its hash, so nothing is taken on trust.
export GONOSUMDB=sigs.k8s.io/sig-storage-lib-external-provisioner

# required D MOD: the version of module MOD that module dir D's go.mod requires
required() {
	awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"
}

# ldflags for module dir D: the version each binary reports
ldflags() {
	local d=$1 v
	if [[ $(basename "$d") == kubernetes ]]; then
		v=$(required "$d" k8s.io/kubernetes)
		local minor=${v#v1.}
		minor=${minor%%.*}
		local x
		for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s ' "$x" "$v" "$x" "$x" "$minor"
		done
		printf -- '-X k8s.io/component-base/version.gitTreeState=clean'
	fi
}

declare -A want=()
for b in "$@"; do
	row=$(awk -v b="$b" '$1 == b' <<<"$TABLE")
	[[ -n $row ]] || {
		echo "build.sh: unknown binary $b" >&2
		exit 2
	}
	read -r _ mod pkg <<<"$row"
	want[$mod]+=" $b=$pkg"
done

mkdir -p "$OUT"
for mod in "${!want[@]}"; do
	d=$HERE/modules/$mod
	lf="-s -w $(ldflags "$d")"
	key=$(cat "$d/go.mod" "$d/go.sum" <(go env GOVERSION) <(echo "$lf") | sha256sum | cut -c1-12)
	bin=$CACHE/bin/$mod-$key
	pkgs=()
	for e in ${want[$mod]}; do
		[[ -x $bin/${e%%=*} ]] || pkgs+=("${e#*=}")
	done
	if ((${#pkgs[@]})); then
		start=$(date +%s)
		echo "build.sh: building ${pkgs[*]##*/} ($mod, key $key)" >&2
		mkdir -p "$bin.tmp"
		if [[ $mod == kubernetes ]]; then
			(cd "$d" && go build -trimpath -ldflags "$lf" -o "$bin.tmp/" "${pkgs[@]}")
		else
			# One at a time: each sidecar reports its own version (main.version);
			# what they share is compiled once, in the shared build cache.
			for p in "${pkgs[@]}"; do
				v=$(required "$d" "${p%%/cmd/*}")
				(cd "$d" && go build -trimpath -ldflags "$lf -X main.version=$v" -o "$bin.tmp/" "$p")
			done
		fi
		mkdir -p "$bin"
		mv "$bin.tmp"/* "$bin/"
		rmdir "$bin.tmp"
		echo "build.sh: built ${pkgs[*]##*/} in $(($(date +%s) - start))s" >&2
	fi
	for e in ${want[$mod]}; do
		ln -sfn "$bin/${e%%=*}" "$OUT/${e%%=*}"
	done
done
