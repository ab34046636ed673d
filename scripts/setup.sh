#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root).
# Installs every system package, rustup target and cargo tool that the demo,
# the tests and the benchmarks use. Safe to run again: it only adds what is missing.
set -euo pipefail

PACKAGES=(
  # PXE firmware and first-stage loaders served over TFTP
  ipxe ipxe-qemu
  # the virtual lab
  qemu-system-x86 qemu-utils ovmf iproute2 bridge-utils
  # real DHCP/TFTP/HTTP clients and peers used by the tests
  isc-dhcp-client udhcpc busybox-static curl dnsmasq-base kea-admin
  # what the installer and its initramfs carry, and disk inspection in tests
  linux-image-amd64 kmod cpio zstd rsync e2fsprogs gdisk fdisk dosfstools
  syslinux syslinux-common extlinux systemd-boot-efi
  # golden images
  debootstrap openssh-client
  # reading the ESP of an installed disk in the QEMU tests (no vfat in some host kernels)
  mtools
  # `rollout exec` test: a real sshd per test-made network namespace
  openssh-server
  # the dashboard's browser test
  chromium chromium-driver
  # building
  build-essential pkg-config musl-tools
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding rustup target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi
echo "setup: ok"
