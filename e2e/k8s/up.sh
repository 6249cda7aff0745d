#!/usr/bin/env bash
# up.sh DIR: bring up a one-node Kubernetes in DIR, from binaries built from pinned Go
# modules (build.sh; cached, so a second run starts in seconds) and Debian's etcd,
# containerd, runc and CNI plugins. Nothing is pulled from any registry: the pause
# and busybox images are assembled here. Every server binds to 127.0.0.1 or to
# $NET_PREFIX.0.1, which this script puts on a bridge of its own. Stop it with
# down.sh DIR. Phase timings go to DIR/timings.
#
#   PELAGIC_K8S_CACHE  build cache (see build.sh)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
init_dir "${1:-}"
if [[ -n $(ls -A "$DIR") && ! -e $DIR/.pelagic-k8s ]]; then
	die "$DIR is not empty and was not made by up.sh"
fi
touch "$DIR/.pelagic-k8s"
mkdir -p "$LOGS" "$RUN" "$DIR/images"
T0=$(date +%s%N)

phase packages
"$HERE/packages.sh"
phase_done

phase binaries
"$HERE/build.sh" "$BIN" kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$BIN/" ./e2e/k8s/pause ./e2e/k8s/mkimage)
phase_done

phase images
# pause, the sandbox of every pod; busybox from Debian's static build, for the pods.
img=$DIR/images
rm -rf "$img/pause" "$img/busybox"
mkdir -p "$img/pause" "$img/busybox"/{bin,etc,tmp,root,proc,sys,dev,var}
cp "$BIN/pause" "$img/pause/pause"
cp /bin/busybox "$img/busybox/bin/busybox"
for a in $(/bin/busybox --list); do
	[[ $a == busybox ]] || ln -s busybox "$img/busybox/bin/$a"
done
chmod 1777 "$img/busybox/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$img/busybox/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$img/busybox/etc/group"
"$BIN/mkimage" -dir "$img/pause" -tag "${E2E_IMAGES[0]}" -entrypoint /pause -o "$img/pause.tar" >/dev/null
"$BIN/mkimage" -dir "$img/busybox" -tag "${E2E_IMAGES[1]}" -cmd sh -o "$img/busybox.tar" >/dev/null
phase_done

phase network
claim_network
pick_ports ETCD_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT
phase_done

phase pki
"$HERE/pki.sh" "$DIR"
phase_done

phase etcd
mkdir -p "$DIR/etcd" && chmod 700 "$DIR/etcd"
start etcd etcd --name "$CLUSTER_NAME" --data-dir "$DIR/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster "$CLUSTER_NAME=http://127.0.0.1:$ETCD_PEER_PORT"
wait_for etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
phase_done

phase kube-apiserver
start kube-apiserver "$BIN/kube-apiserver" \
	--advertise-address="$(node_ip 1)" --bind-address="$(node_ip 1)" --secure-port="$APISERVER_PORT" \
	--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
	--service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
	--api-audiences=https://kubernetes.default.svc.cluster.local \
	--endpoint-reconciler-type=none --profiling=false --v=1
wait_for "kube-apiserver /readyz" 180 kubectl get --raw /readyz
alive kube-apiserver
phase_done

phase "controller-manager, scheduler"
# The node monitor grace period is short so that a node cut off is NotReady soon.
start kube-controller-manager "$BIN/kube-controller-manager" \
	--kubeconfig="$DIR/controller-manager.kubeconfig" \
	--authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
	--authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" --leader-elect=false \
	--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
	--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
	--use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
	--node-monitor-grace-period=20s --profiling=false --v=1
start kube-scheduler "$BIN/kube-scheduler" \
	--kubeconfig="$DIR/scheduler.kubeconfig" \
	--authentication-kubeconfig="$DIR/scheduler.kubeconfig" --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
	--bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --leader-elect=false --profiling=false --v=1
wait_for "kube-controller-manager /healthz" 60 curl -skf "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz"
wait_for "kube-scheduler /healthz" 60 curl -skf "https://127.0.0.1:$SCHEDULER_PORT/healthz"
# Pods are refused until the service account controller has made "default".
wait_for "the default service account" 60 kubectl -n default get serviceaccount default
phase_done

"$HERE/node.sh" "$DIR" 1

ms=$((($(date +%s%N) - T0) / 1000000))
printf '%-30s %6d.%01ds\n' "up.sh total" $((ms / 1000)) $((ms % 1000 / 100)) | tee -a "$DIR/timings" >&2
echo "export KUBECONFIG=$KUBECONFIG"
