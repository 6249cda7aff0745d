#!/usr/bin/env bash
# run-tests.sh [--report] CMD...: start one local cluster that every test binary
# shares (PELAGIC_TEST_CLUSTER), run CMD, stop the cluster, keep CMD's status.
# --report: CMD is a `go test -json`, whose output e2e/testreport prints as go test
# would, then with the counts of passed, failed and skipped tests and every skip's reason;
# a line of output that carries one of the cluster's keys fails the run.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
report=
if [[ ${1:-} == --report ]]; then
	shift
	report=$(mktemp /tmp/pelagic-testreport.XXXXXX)
	trap 'rm -f "$report"' EXIT
	(cd "$HERE/.." && go build -o "$report" ./e2e/testreport) || exit 1
fi
# run CMD...: CMD, through the report when asked; the first failure's status
run() {
	if [[ -z $report ]]; then
		"$@"
		return
	fi
	# The cluster's keys, for the report to look for in every line the tests print.
	local keys
	keys=$(sed -n 's/^CEPH_[A-Z]*_KEYFILE=//p' "$PELAGIC_TEST_CLUSTER/cluster.env" | paste -sd, -)
	"$@" | "$report" -secret-files "$keys"
	local st=("${PIPESTATUS[@]}")
	return $((st[0] != 0 ? st[0] : st[1]))
}
if [[ -n ${PELAGIC_TEST_CLUSTER:-} ]]; then
	run "$@"
	exit
fi
dir=$(mktemp -d /tmp/pelagic-test.XXXXXX)
trap 'bash "$HERE/ceph/down.sh" "$dir" >/dev/null 2>&1; rm -f "$report"' EXIT
if ! bash "$HERE/ceph/up.sh" "$dir" >"$dir.up.log" 2>&1; then
	cat "$dir.up.log"
	echo "run-tests: the local cluster did not start" >&2
	exit 1
fi
tail -n 1 "$dir.up.log"
export PELAGIC_TEST_CLUSTER=$dir
start=$(date +%s)
run "$@"
rc=$?
echo "run-tests: tests took $(($(date +%s) - start))s, exit $rc"
exit $rc
