#!/bin/busybox sh
# The guest's first process, run by busybox from the initramfs. It loads the
# modules the harness packed, brings up the network, builds the guest's root
# (the host's / over 9p, read-only, under a tmpfs overlay) and then serves
# the harness: it runs every WORK/cmd.N it finds, in order, inside that
# root, writing WORK/out.N and then WORK/rc.N. WORK is the harness's work
# directory, shared read-write at the same path. WORK/halt powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# pelagic.addr=IP/LEN pelagic.work=DIR (see vm.go)
for word in $(cat /proc/cmdline); do
	case $word in
	pelagic.addr=*) addr=${word#*=} ;;
	pelagic.work=*) work=${word#*=} ;;
	esac
done
fail() {
	echo "pelagic-guest: $*"
	poweroff -f
}

# crc32c_intel needs a CPU feature the emulated CPU lacks; crc32c_generic serves.
while read -r module; do
	insmod "$module" 2>/dev/null || case $module in
	*crc32c-intel*) ;;
	*) echo "pelagic-guest: insmod $module failed" ;;
	esac
done </modules

ip link set lo up
ip link set eth0 up
ip addr add "$addr" dev eth0 || fail "no address $addr"

opts=trans=virtio,version=9p2000.L,msize=524288
mkdir -p /host /rw /root
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || fail "cannot mount the host's root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /root || fail "no overlay"
mount -t proc proc /root/proc
mount -t sysfs sysfs /root/sys
mount -t devtmpfs devtmpfs /root/dev
mkdir -p /root/dev/pts /root/dev/shm
mount -t devpts devpts /root/dev/pts
for dir in /tmp /run /dev/shm; do
	mount -t tmpfs -o mode=1777 tmpfs "/root$dir"
done
mkdir -p "/root$work"
mount -t 9p -o "$opts" work "/root$work" || fail "cannot mount the work directory $work"

# udev, as on a node: rbd device map waits for its events.
chroot /root /lib/systemd/systemd-udevd --daemon || fail "udevd did not start"

echo "pelagic-guest: up after $(cut -d' ' -f1 /proc/uptime) s"
: >"/root$work/ready"
n=0
while :; do
	if [ -e "/root$work/cmd.$n" ]; then
		chroot /root /bin/sh -c 'cd / && exec /bin/sh "$0"' "$work/cmd.$n" \
			</dev/null >"/root$work/out.$n" 2>&1
		echo $? >"/root$work/rc.$n.tmp"
		mv "/root$work/rc.$n.tmp" "/root$work/rc.$n"
		n=$((n + 1))
	elif [ -e "/root$work/halt" ]; then
		sync
		poweroff -f
	else
		sleep 0.1
	fi
done
