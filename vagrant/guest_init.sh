#!/bin/sh
# PID 1 of the stord test VM (vagrant/harness.py). The root file system is the host's,
# shared read-only over virtio-9p; this mounts the kernel file systems, a tmpfs /tmp and
# the checkout (9p tag "stordrepo") at its host path and the harness's writable work
# directory (9p tag "stordwork") at /tmp/work, runs
# /tmp/work/run.sh with its output on the console, records its exit status in
# /tmp/work/rc and powers the VM off (qemu runs with -no-reboot, so a reboot ends it).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up 2>/dev/null || busybox ip link set lo up   # daemons listen on 127.0.0.1
# The checkout, read-only at its own path (it may sit under /tmp, now covered by tmpfs).
for w in $(cat /proc/cmdline); do
    case "$w" in stord_repo=*) repo="${w#stord_repo=}" ;; esac
done
if [ -n "${repo:-}" ]; then
    mkdir -p "$repo" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro stordrepo "$repo" ||
        echo "guest_init: cannot mount the checkout at $repo"
fi
mkdir -p /tmp/work
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 stordwork /tmp/work; then
    cd /tmp/work && sh ./run.sh
    rc=$?
    echo "$rc" > /tmp/work/rc
    echo "STORD-VM-EXIT $rc"
    sync
else
    echo "STORD-VM-EXIT 125 (no work directory)"
fi
busybox reboot -f 2>/dev/null || reboot -ff
# if neither could reboot, init exits: the kernel panics and panic=-1 reboots (qemu stops)
