//! Shared by the workspace's tests (a dev-dependency of every crate) and by
//! vm-harness's lab, which is itself test infrastructure.
//!
//! [`prereq`] is the policy for tests that need root or host tools: a developer's
//! plain `cargo test` skips what this machine cannot run, saying why; under CI or
//! `scripts/test.sh` (`ROLLOUT_TEST_STRICT=1`) a missing prerequisite fails the test.
//! [`netns`] makes and enters network namespaces; [`ports`] finds free ports;
//! [`postgres`] runs a throwaway PostgreSQL server; [`process`] stops a server
//! with everything it started.
//! Only std and libc: every crate's tests build this.

pub mod ipmi_sim;
pub mod netns;
pub mod ports;
pub mod postgres;
pub mod prereq;
pub mod process;
