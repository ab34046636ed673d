//! Shared by the workspace's tests (a dev-dependency of every crate).
//!
//! [`prereq`] is the policy for tests that need root or host tools: a developer's
//! plain `cargo test` skips what this machine cannot run, saying why; under CI or
//! `scripts/test.sh` (`ROLLOUT_TEST_STRICT=1`) a missing prerequisite fails the test.

pub mod prereq;
