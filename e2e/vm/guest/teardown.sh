#!/usr/bin/env bash
# teardown [--after PID] WORK BRIDGE TAP: stop the guest whose QEMU pid WORK/qemu.pid
# records (only if that process names WORK on its command line), delete the TAP and
# the bridge, and remove WORK. With --after, first wait for process PID to exit: the
# watchdog that cleans up after a test binary that was killed.
set -u
if [[ ${1:-} == --after ]]; then
	while kill -0 "$2" 2>/dev/null; do sleep 1; done
	shift 2
fi
work=$1 bridge=$2 tap=$3
[[ -n $work && $work != / ]] || exit 2
if [[ -f $work/qemu.pid ]]; then
	pid=$(<"$work/qemu.pid")
	if [[ $pid =~ ^[0-9]+$ ]] && grep -qzF -- "$work/" "/proc/$pid/cmdline" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null
		for _ in $(seq 100); do
			[[ -e /proc/$pid ]] || break
			sleep 0.1
		done
	fi
fi
for link in "$tap" "$bridge"; do
	if [[ -n $link && -e /sys/class/net/$link ]]; then
		ip link del "$link" || echo "teardown: cannot delete $link" >&2
	fi
done
rm -rf -- "$work"
