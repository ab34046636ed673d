#!/usr/bin/env bash
# The README's main job: on a fresh Debian 12 machine, as root, install what is
# needed, build everything, then let three blank QEMU nodes PXE-install from
# `rollout serve` in a private network namespace, reboot from their own disks
# and phone home. Ends with a table; Ctrl-C or the end tears the lab down.
#
#   scripts/demo.sh                       # 3 nodes, mixed BIOS/UEFI, the Debian image
#   scripts/demo.sh --image tiny          # the fast busybox image
#   scripts/demo.sh --nodes 2 --firmware bios --disk-size 8G --keep /tmp/demo
#
# The Debian image is built once with `rollout image build` (~2.5 min, needs the
# Debian mirror) and cached in target/e2e-images/; the installer initramfs is
# cached in target/e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespaces, taps, QEMU)" >&2; exit 1; }
./scripts/setup.sh
source "$HOME/.cargo/env" 2>/dev/null || true

echo "== build: installer (static, musl)"
cargo build --release -p rollout-installer --target x86_64-unknown-linux-musl
echo "== build: rollout and vm-harness"
cargo build -p rollout --bin rollout
cargo build -p vm-harness --bin vm-harness

exec target/debug/vm-harness demo "$@"
