#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root).
#
# Installs every system package and rustup target that the demo, the tests and
# the benchmarks use, in ONE apt transaction, then checks every program and file
# they rely on and fails naming what is missing and which package provides it.
# apt's exit code is not trusted: installing one package can remove another
# (qemu-system-x86 7.2 removes a newer qemu-utils that Breaks it), so what counts
# is what is on disk afterwards. Running it again changes nothing.
set -euo pipefail

PACKAGES=(
  # PXE firmware and first-stage loaders served over TFTP
  ipxe ipxe-qemu
  # the virtual lab (qemu-utils is pinned below to qemu-system-x86's version)
  qemu-system-x86 qemu-utils ovmf iproute2 bridge-utils
  # real DHCP/TFTP/HTTP clients, peers and relays used by the tests
  isc-dhcp-client udhcpc busybox-static curl dnsmasq-base kea-admin
  # scripts/bench-dhcp.sh: Kea (memfile) beside rollout and dnsmasq, and the ACK capture
  kea-dhcp4-server tcpdump
  # raw-UDP attackers in the security tests (TFTP/DHCP floods)
  python3
  # what the installer and its initramfs carry, and disk inspection in tests
  linux-image-amd64 kmod cpio zstd rsync tar e2fsprogs gdisk fdisk dosfstools util-linux
  syslinux syslinux-common extlinux systemd-boot-efi
  # the storage tools archive beside the initramfs (RAID1, LVM, XFS layouts:
  # rollout initramfs build copies these binaries), and the tiny test image's own
  # initrd (mkinitramfs with their hooks, so it assembles md and activates LVM)
  mdadm lvm2 xfsprogs initramfs-tools
  # golden images
  debootstrap openssh-client
  # reading the ESP of an installed disk in the QEMU tests (no vfat in some host kernels)
  mtools
  # `rollout exec` test: a real sshd per test-made network namespace
  openssh-server
  # the dashboard's browser test
  chromium chromium-driver
  # power control: the IPMI client rollout drives BMCs with, and a simulated BMC
  # for its tests; python3-venv holds sushy-tools (the Redfish emulator) and schemathesis (below)
  ipmitool openipmi python3-venv
  # a self-signed certificate for the Redfish-over-https test
  openssl
  # the README's "Use the lab in your CI" script reads `vm-harness up --json`
  jq
  # /metrics scraped by a real Prometheus; `rollout watch` in a real terminal
  prometheus tmux
  # the raw baseline of scripts/bench-scale.sh (a tarball over sendfile)
  nginx-light
  # building
  build-essential pkg-config musl-tools
  # the Debian package (scripts/package.sh, tests/package.rs): lint it, install it
  # into a debootstrap chroot, run its unit's ExecStart with its capabilities
  lintian dpkg-dev binutils util-linux
  # layouts with /usr over NFS: the lab's NFS server (userspace: this kernel has
  # no nfsd) with rpcbind for NFSv3, and a userspace client to check it
  nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils
  # the multicast first install: udp-sender on the server, udp-receiver in the
  # installer initramfs
  udpcast
  # the shared lease store ([store] url): tests start their own PostgreSQL 15
  # (initdb into a temp dir as the postgres user, runuser, a private socket)
  postgresql
)

# program -> package that provides it
PROGRAMS=(
  qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils qemu-nbd:qemu-utils
  ip:iproute2 bridge:iproute2
  dhclient:isc-dhcp-client udhcpc:udhcpc busybox:busybox-static curl:curl
  dnsmasq:dnsmasq-base perfdhcp:kea-admin kea-dhcp4:kea-dhcp4-server tcpdump:tcpdump
  python3:python3 openssl:openssl
  modprobe:kmod depmod:kmod cpio:cpio zstd:zstd gzip:gzip rsync:rsync
  mke2fs:e2fsprogs mkfs.ext3:e2fsprogs dumpe2fs:e2fsprogs mkswap:util-linux
  tune2fs:e2fsprogs e2fsck:e2fsprogs debugfs:e2fsprogs
  sgdisk:gdisk sfdisk:fdisk mkfs.vfat:dosfstools blkid:util-linux losetup:mount
  extlinux:extlinux mdadm:mdadm lvm:lvm2 mkfs.xfs:xfsprogs
  mkinitramfs:initramfs-tools lsinitramfs:initramfs-tools debootstrap:debootstrap ssh:openssh-client ssh-keygen:openssh-client
  sshd:openssh-server mtype:mtools mdir:mtools chromium:chromium chromedriver:chromium-driver
  cc:build-essential musl-gcc:musl-tools pkg-config:pkg-config
  ipmitool:ipmitool ipmi_sim:openipmi jq:jq
  prometheus:prometheus tmux:tmux nginx:nginx-light
  lintian:lintian dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev strip:binutils setpriv:util-linux
  unshare:util-linux
  ganesha.nfsd:nfs-ganesha rpcbind:rpcbind nfs-cat:libnfs-utils
  udp-sender:udpcast udp-receiver:udpcast
  runuser:util-linux taskset:util-linux tar:tar
)

# file -> package that provides it
FILES=(
  /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf /usr/share/OVMF/OVMF_VARS_4M.fd:ovmf
  /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so:nfs-ganesha-vfs
  /usr/lib/ipxe/undionly.kpxe:ipxe /usr/lib/ipxe/snponly.efi:ipxe /usr/lib/ipxe/ipxe.efi:ipxe
  /usr/lib/ipxe/qemu/efi-virtio.rom:ipxe-qemu /usr/lib/ipxe/qemu/pxe-virtio.rom:ipxe-qemu
  /usr/lib/syslinux/mbr/gptmbr.bin:syslinux-common
  /usr/lib/syslinux/modules/bios/ldlinux.c32:syslinux-common
  /usr/lib/systemd/boot/efi/systemd-bootx64.efi:systemd-boot-efi
  /bin/busybox:busybox-static
  /usr/share/initramfs-tools/hooks/mdadm:mdadm /usr/share/initramfs-tools/hooks/lvm2:lvm2
  /usr/share/initramfs-tools/scripts/local-block/mdadm:mdadm
  /usr/lib/postgresql/15/bin/initdb:postgresql-15 /usr/lib/postgresql/15/bin/pg_ctl:postgresql-15
  /usr/lib/postgresql/15/bin/postgres:postgresql-15
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
# qemu-utils must be the same QEMU as qemu-system-x86: a newer qemu-utils (say 10,
# from backports) Breaks qemu-system-common 7.2, and apt resolves that by removing
# qemu-utils. Name both, at the same version, in the same transaction.
if installed qemu-system-x86 && installed qemu-utils &&
  [ "$(version_of qemu-utils)" != "$(version_of qemu-system-x86)" ]; then
  missing+=(qemu-utils)
fi

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  if installed qemu-system-x86; then qemu_version=$(version_of qemu-system-x86); fi
  args=()
  for p in "${PACKAGES[@]}"; do
    if [ "$p" = qemu-utils ] && [ -n "$qemu_version" ] && [ "$qemu_version" != "(none)" ]; then
      args+=("qemu-utils=$qemu_version")
    else
      args+=("$p")
    fi
  done
  # Every package in one transaction, so apt resolves them together.
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${args[@]}" >/dev/null
fi
# nginx-light is only the bench's baseline (run by bench-scale.sh with its own config in
# a namespace): Debian starts it on the host's port 80, where rollout serves.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled nginx >/dev/null 2>&1; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi

if ! command -v rustup >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  source "$HOME/.cargo/env"
fi
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding rustup target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

# sushy-tools (PyPI, not in Debian): the Redfish emulator tests/power.rs runs,
# with its fake driver (its libvirt one needs a libvirt daemon). In its own venv.
SUSHY_VENV=/opt/rollout-sushy
if [ ! -x "$SUSHY_VENV/bin/sushy-emulator" ]; then
  echo "setup: installing sushy-tools into $SUSHY_VENV"
  python3 -m venv "$SUSHY_VENV"
  "$SUSHY_VENV/bin/pip" install -q sushy-tools
fi

# schemathesis (PyPI, not in Debian): fuzzes the generated OpenAPI document
# against a live server (tests/openapi_fuzz.rs). In its own venv.
SCHEMATHESIS_VENV=/opt/rollout-schemathesis
if [ ! -x "$SCHEMATHESIS_VENV/bin/st" ]; then
  echo "setup: installing schemathesis into $SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q schemathesis
fi

# Verify what is on disk now, whatever apt said. Fills `problems` (what is wrong)
# and `broken` (the packages that would fix it).
verify() {
  problems=() broken=()
  for p in "${PACKAGES[@]}"; do installed "$p" || { problems+=("package $p is not installed"); broken+=("$p"); }; done
  for entry in "${PROGRAMS[@]}"; do
    prog=${entry%%:*} pkg=${entry#*:}
    PATH="$PATH:/usr/sbin:/sbin" command -v "$prog" >/dev/null 2>&1 ||
      { problems+=("program $prog is missing (Debian package $pkg)"); broken+=("$pkg"); }
  done
  for entry in "${FILES[@]}"; do
    file=${entry%%:*} pkg=${entry#*:}
    [ -e "$file" ] || { problems+=("file $file is missing (Debian package $pkg)"); broken+=("$pkg"); }
  done
  compgen -G "/boot/vmlinuz-*" >/dev/null ||
    { problems+=("no kernel /boot/vmlinuz-* (Debian package linux-image-amd64)"); broken+=(linux-image-amd64); }
  compgen -G "/lib/modules/*/modules.dep" >/dev/null ||
    { problems+=("no /lib/modules/*/modules.dep (Debian package linux-image-amd64)"); broken+=(linux-image-amd64); }
  if installed qemu-utils && installed qemu-system-x86 &&
    [ "$(version_of qemu-utils)" != "$(version_of qemu-system-x86)" ]; then
    problems+=("qemu-utils $(version_of qemu-utils) does not match qemu-system-x86 $(version_of qemu-system-x86)")
  fi
  [ -x "$SUSHY_VENV/bin/sushy-emulator" ] ||
    problems+=("$SUSHY_VENV/bin/sushy-emulator is missing (pip install sushy-tools into that venv)")
  "$SCHEMATHESIS_VENV/bin/st" --version >/dev/null 2>&1 ||
    problems+=("$SCHEMATHESIS_VENV/bin/st does not run (pip install schemathesis into that venv)")
  rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
    problems+=("rustup target x86_64-unknown-linux-musl is missing (rustup target add x86_64-unknown-linux-musl)")
}

verify
if ((${#broken[@]})); then
  # A package dpkg calls installed but whose files are gone (deleted by hand, a
  # half-finished upgrade): reinstall it once, then look again.
  mapfile -t broken < <(printf '%s\n' "${broken[@]}" | sort -u)
  echo "setup: reinstalling ${broken[*]} (files missing)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends --reinstall "${broken[@]}" >/dev/null 2>&1 || true
  verify
fi

if ((${#problems[@]})); then
  echo "setup: FAILED, this machine still lacks:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  echo "setup: install the packages named above (apt-get install NAME) and run scripts/setup.sh again" >&2
  exit 1
fi
echo "setup: ok (${#PACKAGES[@]} packages, ${#PROGRAMS[@]} programs, ${#FILES[@]} files checked)"
