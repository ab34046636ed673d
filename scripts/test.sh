#!/usr/bin/env bash
# The test command (README): sets the machine up, builds everything and runs every
# test: unit tests, protocol tests against real clients in network namespaces the
# tests make, the dashboard in headless Chromium, and the QEMU end-to-end installs.
# Run as root on Debian 12.
#
# Nothing is skipped: ROLLOUT_TEST_STRICT=1 makes a test that lacks root, a tool or a
# file fail, naming it and its Debian package (testkit::prereq), where a plain
# `cargo test` would skip it. The tests run in groups, each test exactly once:
#   unit         cargo test --workspace --lib --bins
#   doc          cargo test --workspace --doc
#   integration  cargo test --workspace --exclude vm-harness --test '*'
#                (rollout's and rollout-installer's tests/, testkit's if any)
#   images       cargo test -p rollout --test images -- --ignored --test-threads=1
#                (builds and enters the Debian image; only while it is not cached)
#   e2e          cargo test -p vm-harness --test '*' (QEMU; last, the slowest)
# A failing group does not stop the others. Each group's output goes to
# target/test-GROUP.log; at the end one line per group and, as the last line,
# "N passed, N failed" (scripts/test-summary.sh). Exits non-zero when a build or a
# group failed (a compile error counts) or no test ran.
#
# CI stops a run at 90 minutes and then reports nothing, so the whole run has a
# budget (ROLLOUT_TEST_BUDGET seconds, 80 min by default): a group still running
# when it is spent is killed (with every process it started) and counts as
# failed, and the summary is still printed.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
budget=${ROLLOUT_TEST_BUDGET:-4800}
./scripts/setup.sh
source "$HOME/.cargo/env" 2>/dev/null || true
source scripts/test-summary.sh

export ROLLOUT_TEST_STRICT=1
# The package test builds its server without optimisation (see scripts/package.sh).
export ROLLOUT_PACKAGE_PROFILE=package-ci
export CARGO_TERM_COLOR=never
# A run builds rollout in several feature sets (the workspace, rollout's tests, the
# harness's), each test binary with the whole server in it: without incremental
# caches and with line tables for debug info (backtraces keep file and line) that
# is a third of the disk and less linking. Plain `cargo test` keeps cargo's defaults.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
# The real Debian image, built once per checkout by the image tests themselves
# (debootstrap, then `image enter` installs a package); the QEMU tests install it.
export ROLLOUT_IMAGE_STATE="$PWD/target/e2e-images/state"

mkdir -p target
ran=()

# A run needs room in target/ (the debug builds with their tests, the packaged
# server, the Debian image) and under /tmp for the QEMU labs' disks and their raw
# copies: a run from an empty target/ took 10 GiB of the disk here (28 GiB before
# the build settings above), so 16 GiB leaves room. Checked before an hour of tests, so a full
# disk is named as the cause up front and not met later as a test that could not
# write its disk image. A rerun needs less: what target/ holds already counts.
check_space() {
  local need=${ROLLOUT_TEST_SPACE_GIB:-16} lab_need=6 have tmp avail tmp_avail
  have=$(du -s --block-size=1G target | cut -f1)
  need=$((need - have))
  [ "$need" -ge "$lab_need" ] || need=$lab_need
  tmp=${TMPDIR:-/tmp}
  avail=$(df --output=avail --block-size=1G target | tail -n1 | tr -d ' ')
  tmp_avail=$(df --output=avail --block-size=1G "$tmp" | tail -n1 | tr -d ' ')
  if [ "$avail" -lt "$need" ]; then
    echo "test.sh: $avail GiB free on the filesystem of $PWD/target, the run needs about $need GiB" >&2
    echo "test.sh: free some (an old checkout's target/: cargo clean), or set ROLLOUT_TEST_SPACE_GIB" >&2
    return 1
  fi
  if [ "$tmp_avail" -lt "$lab_need" ]; then
    echo "test.sh: $tmp_avail GiB free in $tmp, the QEMU labs need about $lab_need GiB (or set TMPDIR)" >&2
    return 1
  fi
  echo "test.sh: $avail GiB free for target/ (about $need GiB needed), $tmp_avail GiB in $tmp"
}
check_space

# step NAME KIND FUNCTION: runs FUNCTION with its output on the terminal and in
# target/test-NAME.log, and records "EXIT SECONDS KIND" in target/test-NAME.status.
step() {
  local name=$1 kind=$2 fn=$3 t0 rc
  echo "== $kind $name"
  t0=$(date +%s)
  set +e
  "$fn" 2>&1 | tee "target/test-$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "$rc $(($(date +%s) - t0)) $kind" >"target/test-$name.status"
  echo "== $kind $name: exit $rc in $(($(date +%s) - t0)) s"
  ran+=("$name")
}

# within_budget CMD...: CMD, killed (its whole process group: test binaries,
# QEMU, servers) once the run's budget is spent.
within_budget() {
  local left=$((started + budget - $(date +%s)))
  if [ "$left" -le 0 ]; then
    echo "test.sh: the run's budget of $budget s is spent; not starting: $*" >&2
    return 124
  fi
  local rc=0
  timeout --kill-after=30 "$left" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "test.sh: killed after the run's budget of $budget s (ROLLOUT_TEST_BUDGET): $*" >&2
    echo "test.sh: the test running last in this group's log hung or was too slow" >&2
  fi
  return "$rc"
}

tests() { within_budget cargo test --color never --no-fail-fast "$@"; }

build_installer() { within_budget cargo build --color never --release -p rollout-installer --target x86_64-unknown-linux-musl; }
build_workspace() { within_budget cargo build --color never --workspace --all-targets; }
unit() { tests --workspace --lib --bins; }
doc() { tests --workspace --doc; }
integration() { tests --workspace --exclude vm-harness --test '*'; }
images() { tests -p rollout --test images -- --ignored --test-threads=1; }
e2e() { tests -p vm-harness --test '*'; }

step installer build build_installer
step workspace build build_workspace
step unit tests unit
step doc tests doc
step integration tests integration
if [ ! -L "$ROLLOUT_IMAGE_STATE/images/debian/published" ]; then
  step images tests images
else
  echo "== tests images: the Debian image is built already ($ROLLOUT_IMAGE_STATE), not run"
  echo "0 0 cached the Debian image is built already (rm -rf target/e2e-images to rebuild it)" \
    >target/test-images.status
  ran+=(images)
fi
step e2e tests e2e

echo "== all tests done in $(($(date +%s) - started)) s (logs: target/test-*.log)"
summarize target "${ran[@]}"
