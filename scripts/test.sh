#!/usr/bin/env bash
# The test command (README): sets the machine up, builds everything, runs every test:
# unit tests, protocol tests against real clients in network namespaces, and the
# QEMU end-to-end installs. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source "$HOME/.cargo/env" 2>/dev/null || true

echo "== build: installer (static, musl)"
cargo build --release -p rollout-installer --target x86_64-unknown-linux-musl
echo "== build: workspace"
cargo build --workspace --all-targets

echo "== tests"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
