#!/usr/bin/env bash
# Makes a small bootable root tree for the fast QEMU tests: busybox as init and
# userland, plus the host's Debian kernel and its initrd (initramfs-tools, which
# mounts root=UUID=… and loads the virtio/ext4 modules). It boots its own kernel
# from disk like a real image, in seconds instead of a Debian boot's minutes.
# The real Debian image (rollout image build) is used by the slow e2e test.
#
#   scripts/make-tiny-image.sh DIR        then: rollout image import tiny DIR
set -euo pipefail
dir=${1:?usage: make-tiny-image.sh DIR}
kver=${KERNEL_VERSION:-$(ls /lib/modules | sort -V | tail -n1)}
for f in /bin/busybox "/boot/vmlinuz-$kver" "/boot/initrd.img-$kver"; do
  [ -e "$f" ] || { echo "make-tiny-image: $f is missing (run scripts/setup.sh)" >&2; exit 1; }
done
rm -rf "$dir"
mkdir -p "$dir"/{bin,sbin,etc/init.d,proc,sys,dev,run,tmp,root,boot,usr/share/udhcpc,var/log}
cp /bin/busybox "$dir/bin/busybox"
for app in $("$dir/bin/busybox" --list); do
  [ -e "$dir/bin/$app" ] || ln -s busybox "$dir/bin/$app"
done
ln -sf ../bin/busybox "$dir/sbin/init"
cp "/boot/vmlinuz-$kver" "/boot/initrd.img-$kver" "$dir/boot/"
echo "tiny" > "$dir/etc/hostname"
cat > "$dir/etc/inittab" <<'TAB'
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/bin/reboot
::shutdown:/bin/umount -a -r
TAB
cat > "$dir/etc/init.d/rcS" <<'RCS'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw /
[ -f /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
for nic in /sys/class/net/e*; do
  n=${nic##*/}
  ip link set "$n" up
  udhcpc -i "$n" -n -q -t 10 -T 2 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 && break
done
echo "rollout-tiny: $(hostname) booted from disk, serial $(cat /etc/rollout/serial 2>/dev/null), $(ip -4 -o addr show scope global | awk '{print $4}')" > /dev/console
RCS
cat > "$dir/usr/share/udhcpc/default.script" <<'DHCP'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
DHCP
chmod 755 "$dir/etc/init.d/rcS" "$dir/usr/share/udhcpc/default.script"
# Host identity that an image must never carry; the import strips these too.
: > "$dir/etc/machine-id"
echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
echo "root:x:0:" > "$dir/etc/group"
echo "make-tiny-image: $dir ($(du -sh "$dir" | cut -f1)), kernel $kver"
