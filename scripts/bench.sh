#!/usr/bin/env bash
# The benchmark (not a test): power-on to phone-home split by stage for 1, 3 and
# 6 concurrent nodes, bytes copied, and the copy stage against a raw transfer of
# the same bytes over the same lab network into the same VM. Prints a table.
#
#   scripts/bench.sh                          # tiny image, BIOS nodes, N = 1,3,6
#   scripts/bench.sh --image debian --nodes 1,3 --firmware mixed
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (network namespaces, taps, QEMU)" >&2; exit 1; }
./scripts/setup.sh
source "$HOME/.cargo/env" 2>/dev/null || true
cargo build --release -p rollout-installer --target x86_64-unknown-linux-musl
cargo build -p rollout --bin rollout
cargo build -p vm-harness --bin vm-harness
exec target/debug/vm-harness bench "$@"
