//! One node as the inventory keeps it ([`NodeRecord`]), and the words around
//! it: where its declaration came from, what an operator may ask of it, and
//! its history lines.

use super::*;

/// Where a node's declaration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum Source {
    Config,
    Api,
    Discovered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRecord {
    pub mac: String,
    pub hostname: String,
    pub ip: Option<String>,
    pub image: String,
    pub disk: Option<String>,
    pub root_mib: Option<u64>,
    pub swap_mib: Option<u64>,
    pub source: Source,
    pub state: NodeState,
    /// `pcbios` or `efi`, as iPXE reported it.
    pub firmware: Option<String>,
    pub serial: Option<u64>,
    pub install_id: Option<String>,
    /// Never leaves the server except inside the node's own plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub token: Option<String>,
    pub stage: Option<String>,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Seconds left in the copy at its current rate (a moving average of the
    /// installer's reports, [`progress`]); absent until there are enough
    /// reports, and outside the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Bytes per second: the copy's current rate while it runs, its average
    /// over the whole copy once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_rate: Option<u64>,
    /// Waiting for a copy slot: `[position, queued]` as the installer last
    /// reported it (`queued` event); cleared by its next other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<[u32; 2]>,
    pub last_error: Option<String>,
    pub console_tail: Vec<String>,
    pub installs: u64,
    pub install_started: Option<u64>,
    pub installed_at: Option<u64>,
    pub booted_at: Option<u64>,
    pub boot_id: Option<String>,
    pub last_seen: Option<u64>,
    pub updated: u64,
    /// An operator approved this discovered machine (or asked for its reinstall):
    /// it may be installed over a disk that holds data, like a declared node.
    #[serde(default)]
    pub approved: bool,
    /// The node's SSH host public keys (`ALGORITHM BASE64`), as its installer
    /// reported them in its authenticated `installed` event: what known_hosts
    /// is written from and what `rollout exec` requires. Empty: unknown.
    #[serde(default)]
    pub host_keys: Vec<String>,
    /// `ED25519 SHA256:…` for each of `host_keys`, for operators to compare.
    #[serde(default)]
    pub host_key_fingerprints: Vec<String>,
    /// When the running install last reported (its plan counts): a boot
    /// secret may not start a new install over one that is still talking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<u64>,
    /// SHA-256 of the boot secret in the last install script served for this
    /// node; cleared when a plan request consumes it ([`secrets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub boot_secret: Option<String>,
    /// The running install's rsync password, in clear text because rsyncd's
    /// secrets file needs it; dropped when the install ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub install_rsync: Option<String>,
    /// SHA-256 of the node's secret (its Bearer after the install): the server
    /// only ever compares it, so it keeps no copy it could leak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub node_key: Option<String>,
    /// The node's rsync password (clear text, for rsyncd's secrets file). A
    /// different value from the node's secret, so the secrets file and the
    /// database give image reads, never the node's HTTP identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub node_rsync: Option<String>,
    /// Install scripts served since the installer last fetched a plan ([`stuck`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreported_boots: Option<stuck::UnreportedBoots>,
    /// From the third of them on: "installer booted 3× since 10:02 UTC, never
    /// reached the server: check its NIC driver"; cleared by a plan fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_before_network: Option<String>,
    /// What the node's installer found on the machine (its last granted plan
    /// request). Records stored before inventories read back as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::wire::Hardware>,
    /// When `hardware` was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_at: Option<u64>,
}

impl NodeRecord {
    pub fn new(
        mac: &str,
        hostname: &str,
        image: &str,
        source: Source,
        state: NodeState,
    ) -> NodeRecord {
        NodeRecord {
            mac: mac.into(),
            hostname: hostname.into(),
            ip: None,
            image: image.into(),
            disk: None,
            root_mib: None,
            swap_mib: None,
            source,
            state,
            firmware: None,
            serial: None,
            install_id: None,
            token: None,
            stage: None,
            done_bytes: 0,
            total_bytes: 0,
            eta_secs: None,
            copy_rate: None,
            queue: None,
            last_error: None,
            console_tail: vec![],
            installs: 0,
            install_started: None,
            installed_at: None,
            booted_at: None,
            boot_id: None,
            last_seen: None,
            updated: 0,
            approved: false,
            host_keys: vec![],
            host_key_fingerprints: vec![],
            reported_at: None,
            boot_secret: None,
            install_rsync: None,
            node_key: None,
            node_rsync: None,
            unreported_boots: None,
            stuck_before_network: None,
            hardware: None,
            hardware_at: None,
        }
    }

    /// Declared in the config or the API, or approved by an operator: someone who
    /// owns the machine said to install it, so its disk may be repartitioned even
    /// when it holds data. A stranger installed under `unknown = "install"` is not.
    pub fn declared_or_approved(&self) -> bool {
        self.source != Source::Discovered || self.approved
    }

    /// What needs a person's attention, for the node list of the dashboard and
    /// `rollout watch`: an installer stuck before the network, the last error.
    pub fn trouble(&self) -> String {
        [&self.stuck_before_network, &self.last_error]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// `queued, position K of N` while the install waits for a copy slot.
    pub fn queue_text(&self) -> Option<String> {
        let [position, queued] = self.queue?;
        Some(format!("queued, position {position} of {queued}"))
    }

    /// The stage column of `rollout node list` and `rollout watch`: the queue
    /// place while waiting for a copy slot, else the running step.
    pub fn stage_text(&self) -> String {
        self.queue_text()
            .or_else(|| self.stage.clone())
            .unwrap_or_else(|| "-".into())
    }

    /// The copy shown to API readers and browsers: without the install token
    /// and the credentials.
    pub fn public(&self) -> NodeRecord {
        NodeRecord {
            token: None,
            boot_secret: None,
            install_rsync: None,
            node_key: None,
            node_rsync: None,
            ..self.clone()
        }
    }
}

/// What an operator can ask of one node through the API or the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    Reinstall,
    Approve,
    Ignore,
}

impl OperatorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Reinstall => "reinstall",
            OperatorAction::Approve => "approve",
            OperatorAction::Ignore => "ignore",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub at: u64,
    pub event: serde_json::Value,
}
