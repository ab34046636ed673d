#!/usr/bin/env bash
# Makes a small bootable root tree for the fast QEMU tests: busybox as init and
# userland, plus the host's Debian kernel and an initrd made for it here with
# initramfs-tools (mounts root=UUID=…, loads the virtio/ext4/xfs modules,
# assembles md RAID1 and activates LVM: mdadm's and lvm2's hooks). It boots its
# own kernel from disk like a real image, in seconds instead of a Debian boot's
# minutes. The real Debian image (rollout image build) is used by the slow e2e test.
#
# The root may get /usr over NFS and tmpfs mounts from the fstab the installer
# writes: rcS mounts every fstab entry but / and swap once the network is up.
# Checked in QEMU against nfs-ganesha (NFSv4.1): busybox's mount has no NFS code
# of its own (Debian builds it without), so it resolves the server itself, adds
# `addr=IP` and hands the options to the kernel as text. The server must
# therefore be an IP address (the tiny root has no DNS and no hosts entry for
# it; "mount: bad address 'nfs1'" otherwise), e.g.
#   10.44.0.1:/export/usr /usr nfs ro,nolock,vers=4.1 0 0
# initramfs-tools also tries to mount a /usr it finds in fstab, with klibc's
# nfsmount, which speaks NFSv2/3 only: with vers=4.x it prints "invalid value
# for vers", gives up and boots on (a few seconds of DHCP), and rcS mounts it.
# The NFS client modules and a busybox modprobe that finds them are in the
# root's /lib/modules.
#
#   scripts/make-tiny-image.sh DIR        then: rollout image import tiny DIR
set -euo pipefail
dir=${1:?usage: make-tiny-image.sh DIR}
kver=${KERNEL_VERSION:-$(ls /lib/modules | sort -V | tail -n1)}
for f in /bin/busybox "/boot/vmlinuz-$kver" /usr/sbin/mkinitramfs /usr/bin/lsinitramfs \
  /usr/share/initramfs-tools/hooks/mdadm /usr/share/initramfs-tools/hooks/lvm2; do
  [ -e "$f" ] || { echo "make-tiny-image: $f is missing (run scripts/setup.sh)" >&2; exit 1; }
done
rm -rf "$dir"
mkdir -p "$dir"/{bin,sbin,etc/init.d,etc/udhcpc,proc,sys,dev,run,tmp,root,boot,usr,var/log}
cp /bin/busybox "$dir/bin/busybox"
for app in $("$dir/bin/busybox" --list); do
  [ -e "$dir/bin/$app" ] || ln -s busybox "$dir/bin/$app"
done
ln -sf ../bin/busybox "$dir/sbin/init"
# The kernel runs /sbin/modprobe to load a filesystem it is asked to mount.
ln -sf ../bin/busybox "$dir/sbin/modprobe"
cp "/boot/vmlinuz-$kver" "$dir/boot/"

# The initrd, from a private initramfs-tools configuration: what the host's
# /etc/initramfs-tools says (or whether installing mdadm rebuilt the host's
# initrd) does not matter. MODULES=most carries every block driver and
# filesystem; the modules file loads these at boot whatever the hardware.
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
mkdir -p "$conf"/{conf.d,hooks,scripts}
cat > "$conf/initramfs.conf" <<'CONF'
MODULES=most
BUSYBOX=auto
COMPRESS=zstd
RUNSIZE=10%
RESUME=none
CONF
printf '%s\n' virtio_pci virtio_blk virtio_scsi ext4 xfs md_mod raid1 dm_mod > "$conf/modules"
# mdadm's hook copies the host's /etc/mdadm/mdadm.conf (and its ARRAY lines,
# if the host has arrays); the image's initrd must find the node's arrays
# instead, which it does by scanning (no ARRAY lines). Hooks in the private
# directory run after the packages' ones.
cat > "$conf/hooks/rollout-mdadm-conf" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
mkdir -p "$DESTDIR/etc/mdadm"
printf 'DEVICE partitions\nHOMEHOST <system>\n' > "$DESTDIR/etc/mdadm/mdadm.conf"
HOOK
chmod 755 "$conf/hooks/rollout-mdadm-conf"
# How a RAID1 root with a disk missing gets started: udev runs `mdadm
# --incremental` on each member it sees, which leaves an array with a member
# missing assembled but inactive. initramfs-tools' local script waits for
# root=UUID=… (up to 30 s, or rootdelay) and runs scripts/local-block/mdadm
# once a second meanwhile; that script counts its runs and at 2/3 of the wait
# (20 runs, 20 s) runs `mdadm --run /dev/md?*` and `mdadm --assemble --scan
# --run`, which start the array degraded. So it boots about 20 s late, with no
# kernel parameter or conf; the installer's arrays are named `any:NAME`
# (--homehost=any), so they are assembled as /dev/md/NAME on any hostname.
mkinitramfs -d "$conf" -o "$dir/boot/initrd.img-$kver" "$kver"
contents=$(lsinitramfs "$dir/boot/initrd.img-$kver")
for want in usr/sbin/mdadm usr/sbin/lvm scripts/local-block/mdadm etc/mdadm/mdadm.conf \
  /raid1.ko /dm-mod.ko /xfs.ko /virtio_blk.ko; do
  grep -q -- "$want" <<<"$contents" ||
    { echo "make-tiny-image: the initrd lacks $want (mdadm, lvm2 and xfsprogs installed? run scripts/setup.sh)" >&2; exit 1; }
done

# The NFS client (v3 and v4) for a /usr over NFS, loaded by rcS with busybox's
# modprobe from the root's own modules tree.
moddir="/lib/modules/$kver"
mkdir -p "$dir$moddir"
for m in $( (modprobe -S "$kver" --show-depends nfsv4; modprobe -S "$kver" --show-depends nfsv3) |
  awk '$1 == "insmod" {print $2}' | sort -u); do
  mkdir -p "$dir$(dirname "$m")"
  cp "$m" "$dir$m"
done
cp "$moddir"/modules.{dep,alias,symbols,builtin,order,softdep} "$dir$moddir/"
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
  udhcpc -i "$n" -n -q -t 10 -T 2 -s /etc/udhcpc/default.script >/dev/null 2>&1 && break
done
# fstab's other mounts (NFS /usr, tmpfs, local data) now the network is up, as
# `mount -a` would, but busybox's `mount -a` tries the mounted root again and
# fails noisily: each other entry is mounted by its directory, once.
grep -qs nfs /etc/fstab && { modprobe nfsv4; modprobe nfsv3; } 2>/dev/null
[ -f /etc/fstab ] && while read -r src mnt type opts rest; do
  case "$src" in ''|\#*) continue ;; esac
  [ "$mnt" = / ] || [ "$type" = swap ] || grep -q " $mnt " /proc/mounts && continue
  mkdir -p "$mnt"
  mount "$mnt" 2>/dev/console || echo "rollout-tiny: mounting $src on $mnt ($type) failed" > /dev/console
done < /etc/fstab
echo "rollout-tiny: $(hostname) booted from disk, serial $(cat /etc/rollout/serial 2>/dev/null), $(ip -4 -o addr show scope global | awk '{print $4}')" > /dev/console
# What the layout made of this node, for the tests to read off the console:
# each mount, each md array with its members present/expected, each disk's
# logical sector size, and whether the image's /usr (its marker) is visible.
{
  awk '$2 !~ "^/(proc|sys|dev|run)" {print "rollout-tiny: mount " $2 " " $3 " " $1}' /proc/mounts
  [ -r /proc/mdstat ] && awk '/^md/ {name = $1; state = $3 " " $4}
    /blocks/ && name {print "rollout-tiny: md " name " " state " " $(NF-1); name = ""}' /proc/mdstat
  for q in /sys/block/*/queue/logical_block_size; do
    d=${q#/sys/block/}; d=${d%%/*}
    case "$d" in loop*|ram*|md*|dm-*) continue ;; esac
    echo "rollout-tiny: sectors $d $(cat "$q")"
  done
  if [ -e /usr/share/rollout-tiny/usr-marker ]; then echo "rollout-tiny: usr-marker present"
  else echo "rollout-tiny: usr-marker absent"; fi
} > /dev/console 2>&1
RCS
# rsync and its libraries on the local root (not /usr, which may be NFS):
# rollout-sync, the node's pull side of updates, runs it.
cp /usr/bin/rsync "$dir/bin/rsync"
for lib in $(ldd /usr/bin/rsync | grep -o '/[^ ]*'); do
  mkdir -p "$dir$(dirname "$lib")"
  cp -L "$lib" "$dir$lib"
done
# Something in /usr that only the image has: a node whose /usr comes over NFS
# sees it there and must not have it on its local root.
mkdir -p "$dir/usr/share/rollout-tiny"
echo "the image's /usr" > "$dir/usr/share/rollout-tiny/usr-marker"
# In /etc, not /usr/share: a root whose /usr is NFS needs it to get the
# address that mounts /usr.
cat > "$dir/etc/udhcpc/default.script" <<'DHCP'
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
chmod 755 "$dir/etc/init.d/rcS" "$dir/etc/udhcpc/default.script"
# Host identity that an image must never carry; the import strips these too.
: > "$dir/etc/machine-id"
echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
echo "root:x:0:" > "$dir/etc/group"
echo "make-tiny-image: $dir ($(du -sh "$dir" | cut -f1)), kernel $kver"
