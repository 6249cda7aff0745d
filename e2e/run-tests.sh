#!/usr/bin/env bash
# run-tests.sh CMD...: start one local cluster that every test binary
# shares (PELAGIC_TEST_CLUSTER), run CMD, stop the cluster, keep CMD's status.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n ${PELAGIC_TEST_CLUSTER:-} ]]; then
	exec "$@"
fi
dir=$(mktemp -d /tmp/pelagic-test.XXXXXX)
trap 'bash "$HERE/ceph/down.sh" "$dir" >/dev/null 2>&1' EXIT
if ! bash "$HERE/ceph/up.sh" "$dir" >"$dir.up.log" 2>&1; then
	cat "$dir.up.log"
	echo "run-tests: the local cluster did not start" >&2
	exit 1
fi
tail -n 1 "$dir.up.log"
export PELAGIC_TEST_CLUSTER=$dir
start=$(date +%s)
"$@"
rc=$?
echo "run-tests: tests took $(($(date +%s) - start))s, exit $rc"
exit $rc
