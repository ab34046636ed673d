//! The per-node install state machine. Pure: the store and the HTTP layer call
//! [`next`] and refuse what it refuses, so every transition is tested here.

use crate::config::{RetryPolicy, UnknownPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum NodeState {
    /// PXE-booted but not declared; what happens next is the unknown-node policy.
    Discovered,
    /// An operator chose not to provision it: it boots whatever is on its disk.
    Ignored,
    /// Installs on its next boot.
    Pending,
    Installing,
    Installed,
    Failed,
}

impl NodeState {
    /// Every state, in the order a node usually goes through them.
    pub const ALL: [NodeState; 6] = [
        NodeState::Discovered,
        NodeState::Ignored,
        NodeState::Pending,
        NodeState::Installing,
        NodeState::Installed,
        NodeState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Ignored => "ignored",
            NodeState::Pending => "pending",
            NodeState::Installing => "installing",
            NodeState::Installed => "installed",
            NodeState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        Some(match s {
            "discovered" => NodeState::Discovered,
            "ignored" => NodeState::Ignored,
            "pending" => NodeState::Pending,
            "installing" => NodeState::Installing,
            "installed" => NodeState::Installed,
            "failed" => NodeState::Failed,
            _ => return None,
        })
    }
}

/// What can happen to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Approve,
    Ignore,
    /// The installer fetched a plan: a new install attempt.
    BeginInstall,
    Progress,
    Installed,
    Failed,
    /// No report within the install timeout.
    TimedOut,
    RequestReinstall,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node that is {} cannot {what}{hint}", from.as_str())]
pub struct TransitionError {
    pub from: NodeState,
    pub what: &'static str,
    pub hint: &'static str,
}

fn verb(t: Transition) -> &'static str {
    match t {
        Transition::Approve => "be approved",
        Transition::Ignore => "be ignored",
        Transition::BeginInstall => "start an install",
        Transition::Progress => "report progress",
        Transition::Installed => "finish an install",
        Transition::Failed => "fail an install",
        Transition::TimedOut => "time out",
        Transition::RequestReinstall => "be reinstalled",
    }
}

pub fn next(from: NodeState, t: Transition) -> Result<NodeState, TransitionError> {
    use NodeState as S;
    use Transition as T;
    let to = match (from, t) {
        // Failed too: a stranger whose disk was refused (it holds data) installs
        // once an operator approves it.
        (S::Discovered | S::Ignored | S::Failed, T::Approve) => S::Pending,
        (S::Discovered | S::Pending, T::Ignore) => S::Ignored,
        // Discovered nodes start installing directly when the policy says "install".
        (S::Discovered | S::Pending | S::Failed, T::BeginInstall) => S::Installing,
        // A node that rebooted mid-install starts over with a fresh attempt.
        (S::Installing, T::BeginInstall) => S::Installing,
        (S::Installing, T::Progress) => S::Installing,
        (S::Installing, T::Installed) => S::Installed,
        (S::Installing, T::Failed | T::TimedOut) => S::Failed,
        (
            S::Discovered | S::Ignored | S::Installing | S::Installed | S::Failed | S::Pending,
            T::RequestReinstall,
        ) => S::Pending,
        (from, t) => {
            let hint = match (from, t) {
                (S::Installed, T::BeginInstall) => {
                    "; request a reinstall first (rollout node reinstall NAME)"
                }
                (S::Ignored, T::BeginInstall) => {
                    "; approve it first (rollout discovered approve MAC)"
                }
                (_, T::Progress | T::Installed | T::Failed) => {
                    "; the report belongs to an install that is over"
                }
                _ => "",
            };
            return Err(TransitionError {
                from,
                what: verb(t),
                hint,
            });
        }
    };
    Ok(to)
}

/// What a node that asks for its iPXE script is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    Install,
    LocalDisk,
    /// Ask again later (awaiting approval, or a held failure).
    Wait(&'static str),
}

pub fn boot_action(state: NodeState, unknown: UnknownPolicy, retry: RetryPolicy) -> BootAction {
    match state {
        NodeState::Installed | NodeState::Ignored => BootAction::LocalDisk,
        NodeState::Discovered => match unknown {
            UnknownPolicy::Install => BootAction::Install,
            UnknownPolicy::Approve => BootAction::Wait(
                "unknown machine, waiting for approval (rollout discovered approve)",
            ),
            UnknownPolicy::Ignore => BootAction::LocalDisk,
        },
        NodeState::Failed if retry == RetryPolicy::Hold => BootAction::Wait(
            "last install failed; waiting for an operator (rollout node reinstall)",
        ),
        NodeState::Pending | NodeState::Installing | NodeState::Failed => BootAction::Install,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState as S;
    use Transition as T;

    const ALL_STATES: [S; 6] = [
        S::Discovered,
        S::Ignored,
        S::Pending,
        S::Installing,
        S::Installed,
        S::Failed,
    ];
    const ALL: [T; 8] = [
        T::Approve,
        T::Ignore,
        T::BeginInstall,
        T::Progress,
        T::Installed,
        T::Failed,
        T::TimedOut,
        T::RequestReinstall,
    ];

    /// The whole table, so a changed rule shows up as a changed line here.
    #[test]
    fn every_transition_from_every_state() {
        let want = |from: S, t: T| -> Option<S> {
            Some(match (from, t) {
                (S::Discovered | S::Ignored | S::Failed, T::Approve) => S::Pending,
                (S::Discovered, T::Ignore) | (S::Pending, T::Ignore) => S::Ignored,
                (S::Discovered | S::Pending | S::Failed | S::Installing, T::BeginInstall) => {
                    S::Installing
                }
                (S::Installing, T::Progress) => S::Installing,
                (S::Installing, T::Installed) => S::Installed,
                (S::Installing, T::Failed) | (S::Installing, T::TimedOut) => S::Failed,
                (_, T::RequestReinstall) => S::Pending,
                _ => return None,
            })
        };
        for from in ALL_STATES {
            for t in ALL {
                assert_eq!(next(from, t).ok(), want(from, t), "{from:?} --{t:?}-->");
            }
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = next(S::Installed, T::BeginInstall).unwrap_err().to_string();
        assert_eq!(e, "a node that is installed cannot start an install; request a reinstall first (rollout node reinstall NAME)");
        let e = next(S::Installed, T::Progress).unwrap_err().to_string();
        assert!(e.contains("install that is over"), "{e}");
    }

    #[test]
    fn boot_actions_follow_state_and_policy() {
        assert_eq!(
            boot_action(S::Installed, UnknownPolicy::Install, RetryPolicy::Retry),
            BootAction::LocalDisk
        );
        assert_eq!(
            boot_action(S::Pending, UnknownPolicy::Ignore, RetryPolicy::Retry),
            BootAction::Install
        );
        assert_eq!(
            boot_action(S::Discovered, UnknownPolicy::Install, RetryPolicy::Retry),
            BootAction::Install
        );
        assert!(matches!(
            boot_action(S::Discovered, UnknownPolicy::Approve, RetryPolicy::Retry),
            BootAction::Wait(_)
        ));
        assert_eq!(
            boot_action(S::Discovered, UnknownPolicy::Ignore, RetryPolicy::Retry),
            BootAction::LocalDisk
        );
        assert_eq!(
            boot_action(S::Failed, UnknownPolicy::Approve, RetryPolicy::Retry),
            BootAction::Install
        );
        assert!(matches!(
            boot_action(S::Failed, UnknownPolicy::Approve, RetryPolicy::Hold),
            BootAction::Wait(_)
        ));
        assert_eq!(
            boot_action(S::Installing, UnknownPolicy::Approve, RetryPolicy::Retry),
            BootAction::Install
        );
        assert_eq!(
            boot_action(S::Ignored, UnknownPolicy::Install, RetryPolicy::Retry),
            BootAction::LocalDisk
        );
    }
}
