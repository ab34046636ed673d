#!/usr/bin/env bash
# Fuzzes the DHCP decode + reply path for a bounded time (default 120 s).
# Not part of CI: run it by hand or before a release. Findings land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
RUSTC_BOOTSTRAP=1 cargo fuzz run dhcp_reply -- -max_total_time="$seconds" -max_len=1500
