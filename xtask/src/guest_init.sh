#!/bin/busybox sh
# First stage of a test guest (PID 1 in the initramfs, busybox only): load
# the modules that reach the host's root, mount it read-only under a tmpfs
# overlay, then switch_root into it and run the command of /guest/command.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in /modules/*.ko; do insmod "$module" 2>/dev/null; done
. /guest/env
if ! mount -t virtiofs -o ro hostroot /host; then
    echo "guest: cannot mount the host root over virtiofs"
    poweroff -f
fi
mount -t tmpfs -o size=75% upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/data,workdir=/upper/work /newroot
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs run $R/run
# /tmp stays the overlay's: the host's files show through (a workspace
# cloned under /tmp, as CI may, must be visible) and writes stay in RAM.
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
# The guest kernel's modules, where modprobe (from the host root) looks.
mkdir -p $R/lib/modules/$GUEST_KERNEL
mount --bind $R$GUEST_MODULES $R/lib/modules/$GUEST_KERNEL
cp /guest/command $R/run/guest-command
cat > $R/run/guest-init <<EOF
#!/bin/sh
# switch_root, not chroot: the kernel runs request_module's modprobe in
# PID 1's root, so autoloading veth and sch_* needs the overlay to be it.
cd '$GUEST_CWD' || exit 1
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ip link set lo up
echo @@GUEST_START
/bin/sh /run/guest-command </dev/null 2>&1
echo "@@GUEST_STATUS=\$?"
sync
echo o > /proc/sysrq-trigger
sleep 60
EOF
exec switch_root $R /bin/sh /run/guest-init
