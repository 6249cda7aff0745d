#!/usr/bin/env bash
# pki.sh DIR [N...]: the e2e cluster's CA, certificates and kubeconfigs (openssl only,
# EC P-256 keys: fast to make), and those of nodes N. Existing files are kept.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
init_dir "$1"
shift
mkdir -p "$PKI"
cd "$PKI"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# cert NAME CN [O] [SAN] [USAGE]: a certificate signed by the CA
cert() {
	local n=$1 cn=$2 o=${3:-} san=${4:-} usage=${5:-clientAuth} subj
	[[ -f $n.crt ]] && return
	subj="/CN=$cn"
	[[ -n $o ]] && subj="/O=$o/CN=$cn"
	key "$n.key"
	openssl req -new -key "$n.key" -subj "$subj" -out "$n.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		[[ -n $san ]] && echo "subjectAltName=$san"
	} >"$n.ext"
	openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
		-extfile "$n.ext" -out "$n.crt" 2>/dev/null
	rm -f "$n.csr" "$n.ext"
}

# kubeconfig NAME USER CERT: DIR/NAME.kubeconfig for the API server
kubeconfig() {
	[[ -f $DIR/$1.kubeconfig ]] && return
	printf 'client-certificate-data: %s\nclient-key-data: %s\n' "$(base64 -w0 "$3.crt")" "$(base64 -w0 "$3.key")" |
		write_kubeconfig "$DIR/$1.kubeconfig" "$2"
}

if [[ ! -f ca.crt ]]; then
	key ca.key
	openssl req -x509 -new -key ca.key -subj "/CN=$CLUSTER_NAME-ca" -days 30 -out ca.crt 2>/dev/null
fi
svc_ip=${SERVICE_CIDR%.0/24}.1
cert apiserver kube-apiserver "" \
	"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$(node_ip 1),IP:$svc_ip" \
	serverAuth
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert admin kubernetes-admin system:masters
cert controller-manager system:kube-controller-manager
cert scheduler system:kube-scheduler
[[ -f sa.key ]] || { key sa.key && openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null; }
kubeconfig admin kubernetes-admin admin
kubeconfig controller-manager system:kube-controller-manager controller-manager
kubeconfig scheduler system:kube-scheduler scheduler

for n in "$@"; do
	name=$(node_name "$n")
	cert "kubelet-$n" "system:node:$name" system:nodes
	cert "kubelet-serving-$n" "system:node:$name" system:nodes "DNS:$name,IP:$(node_ip "$n")" serverAuth
	kubeconfig "kubelet-$n" "system:node:$name" "kubelet-$n"
done
