#!/usr/bin/env bash
# The test command (README): sets the machine up, builds everything and runs every
# test: unit tests, protocol tests against real clients in network namespaces the
# tests make, the dashboard in headless Chromium, and the QEMU end-to-end installs.
# Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
./scripts/setup.sh
source "$HOME/.cargo/env" 2>/dev/null || true

echo "== build: installer (static, musl)"
cargo build --release -p rollout-installer --target x86_64-unknown-linux-musl
echo "== build: workspace"
cargo build --workspace --all-targets

# The real Debian image, built once per checkout by the image tests themselves
# (debootstrap, then `image enter` installs a package); the QEMU tests install it.
export ROLLOUT_IMAGE_STATE="$PWD/target/e2e-images/state"
if [ ! -L "$ROLLOUT_IMAGE_STATE/images/debian/published" ]; then
  echo "== tests: build and enter a Debian image (debootstrap, ~2 min)"
  cargo test -p rollout --test images -- --ignored --test-threads=1 2>&1 | tee target/test-images.log
fi

echo "== tests"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
echo "== all tests done in $(( $(date +%s) - started )) s"
