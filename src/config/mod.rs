//! The one TOML file an operator writes. Validated on load: every error names the
//! key and says how to fix it, because a provisioning server that starts with a
//! wrong range hands out wrong addresses to a whole rack.

mod bmc;
mod image;
mod layout;
mod link;
mod mirror;
mod multicast;
mod policy;
mod store;
mod valid;

pub use bmc::{
    check_password_file, check_password_files, check_secret_file, BmcConfig, BmcDriver, BootMode,
    PowerConfig,
};
pub use image::{ImageConfig, ImageMount};
pub use layout::{LayoutConfig, LvmConfig, MountConfig, PartitionConfig, RaidConfig, VolumeConfig};
pub use link::BondConfig;
pub use mirror::{
    check_password_file as check_mirror_password_file, read_password as read_mirror_password,
    ImagesConfig, MirrorSource, MirrorUrl, MIRROR_MODULE, MIRROR_USER,
};
pub use multicast::MulticastConfig;
use policy::check_unknown_policy;
pub use policy::{RetryPolicy, UnknownPolicy};
pub use store::{redact, PgTarget, StoreConfig};
pub use valid::{DeclaredNode, MachineFacts, ValidConfig};

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML or has an unknown key: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}; {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub state_dir: PathBuf,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub dhcp: DhcpConfig,
    #[serde(default)]
    pub install: InstallConfig,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeConfig>,
    #[serde(default, rename = "image")]
    pub images: Vec<ImageConfig>,
    /// `[images]`: mirroring images from a primary server, or letting mirrors copy.
    #[serde(default, rename = "images")]
    pub mirroring: ImagesConfig,
    #[serde(default)]
    pub power: PowerConfig,
    /// Named disk layouts (`[[layout]]`) that nodes and `[install]` pick by name.
    #[serde(default, rename = "layout")]
    pub layouts: Vec<LayoutConfig>,
    /// `[store]`: a PostgreSQL database shared by several servers; absent,
    /// SQLite in state_dir.
    pub store: Option<StoreConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The provisioning interface. DHCP binds to it and to nothing else.
    pub interface: Option<String>,
    /// The address clients reach TFTP, HTTP and rsync on.
    pub address: Option<Ipv4Addr>,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    #[serde(default = "default_tftp_port")]
    pub tftp_port: u16,
    /// Where the iPXE first-stage binaries are; Debian's `ipxe` package puts them here.
    #[serde(default = "default_tftp_root")]
    pub tftp_root: PathBuf,
    /// Listen for HTTP/TFTP on this address instead of `address` (tests bind 127.0.0.1).
    pub listen: Option<Ipv4Addr>,
    #[serde(default = "default_rsync_port")]
    pub rsync_port: u16,
    /// The admin's token (any API call, every role); generated into
    /// state_dir/admin.token if unset. At least [`MIN_ADMIN_TOKEN_LEN`] characters.
    pub admin_token: Option<String>,
    /// Let anyone who reaches the server read the dashboard and the operator API
    /// without a credential. Off by default: every read needs a token of any role.
    #[serde(default)]
    pub anonymous_read: bool,
    /// Seconds a dashboard sign-in lasts (sessions are kept in memory, so a
    /// restart also ends them).
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: u64,
}

/// Shortest admin token `serve` accepts: 32 characters (128 bits as hex).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Why an admin token is refused (empty or short), or `None` when it is long enough.
pub fn admin_token_problem(token: &str) -> Option<String> {
    let len = token.trim().chars().count();
    (len < MIN_ADMIN_TOKEN_LEN).then(|| {
        format!("the admin token is {len} characters long, shorter than the minimum of {MIN_ADMIN_TOKEN_LEN}")
    })
}

/// What to do about a refused admin token.
pub const ADMIN_TOKEN_FIX: &str = "use a random one, e.g. `openssl rand -hex 24` (48 characters), or remove server.admin_token and delete state_dir/admin.token so `rollout serve` generates one";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            interface: None,
            address: None,
            http_port: default_http_port(),
            tftp_port: default_tftp_port(),
            tftp_root: default_tftp_root(),
            listen: None,
            rsync_port: default_rsync_port(),
            admin_token: None,
            anonymous_read: false,
            session_lifetime: default_session_lifetime(),
        }
    }
}

fn default_http_port() -> u16 {
    80
}
fn default_tftp_port() -> u16 {
    69
}
fn default_rsync_port() -> u16 {
    873
}
fn default_session_lifetime() -> u64 {
    8 * 3600
}
fn default_tftp_root() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    Full,
    Proxy,
    #[default]
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    #[serde(default)]
    pub mode: DhcpMode,
    pub range: Option<[Ipv4Addr; 2]>,
    pub netmask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default = "default_lease_time")]
    pub lease_time: u32,
    /// Seconds a DECLINEd address stays out of the pool.
    #[serde(default = "default_quarantine")]
    pub quarantine_time: u32,
    /// Subnets behind DHCP relays (requests arrive with giaddr set).
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelaySubnet>,
    /// Addresses handed to clients with no reservation and no lease, per minute
    /// once `new_clients_burst` is spent: a flood of made-up MACs cannot drain
    /// the pool. Declared nodes and clients that hold a lease are never limited.
    #[serde(default = "default_new_clients_per_minute")]
    pub new_clients_per_minute: u32,
    /// How many new clients may come at once (a rack powering on).
    #[serde(default = "default_new_clients_burst")]
    pub new_clients_burst: u32,
    /// Ping an address before offering it to a client that never had it (as
    /// dnsmasq does); one that answers is quarantined like a DECLINEd address.
    /// Off by default: each new client's OFFER then waits up to half a second.
    #[serde(default)]
    pub ping_before_offer: bool,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: DhcpMode::Off,
            range: None,
            netmask: None,
            router: None,
            dns: vec![],
            lease_time: default_lease_time(),
            quarantine_time: default_quarantine(),
            relays: vec![],
            new_clients_per_minute: default_new_clients_per_minute(),
            new_clients_burst: default_new_clients_burst(),
            ping_before_offer: false,
        }
    }
}

fn default_new_clients_per_minute() -> u32 {
    60
}
/// 64 undeclared machines may power on at once; a flood gets those and then one a second.
fn default_new_clients_burst() -> u32 {
    64
}

fn default_lease_time() -> u32 {
    3600
}
fn default_quarantine() -> u32 {
    600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySubnet {
    pub range: [Ipv4Addr; 2],
    pub netmask: Ipv4Addr,
    /// Defaults to the relay's giaddr, which is the usual router on that subnet.
    pub router: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// Image installed on nodes that name none (and on unknown MACs).
    #[serde(default = "default_image")]
    pub image: String,
    /// Extra kernel arguments for the installer (and the installed OS).
    #[serde(default = "default_cmdline")]
    pub kernel_cmdline: String,
    /// What to do with machines that PXE-boot but are not declared, as written in
    /// the file (`None`: not written, [`UnknownPolicy::DEFAULT`] applies). Kept
    /// apart from the default so validation can tell a written "install" from a
    /// defaulted one; read it through [`InstallConfig::unknown_policy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<UnknownPolicy>,
    /// What a node whose install failed does on its next boot.
    #[serde(default)]
    pub on_failure: RetryPolicy,
    /// Seconds without a report after which an install is marked failed.
    #[serde(default = "default_install_timeout")]
    pub install_timeout: u64,
    /// Seconds a failed installer waits before rebooting (0: wait for the server).
    #[serde(default = "default_reboot_after")]
    pub reboot_after_failure: u64,
    /// Seconds between an installed node's own checks for a new serial (a systemd
    /// timer running rollout-sync); 0, the default: nodes update on `rollout sync`.
    #[serde(default)]
    pub sync_interval: u64,
    /// A reinstall keeps the node's SSH host keys and machine-id when its disk
    /// holds its previous install (so `rollout exec` and operators see the same
    /// host key); `false`: every install makes fresh ones.
    #[serde(default = "yes")]
    pub keep_identity: bool,
    /// The `[[layout]]` of nodes that name none; default: 1 GiB ext3 root + 2 GiB swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// How many installs copy the image at once; the others wait in the
    /// server's queue (`admission`). `None`: sized from this machine
    /// (`admission::max_copies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_copies: Option<u32>,
    /// One udpcast stream of the image for the nodes that install a serial at
    /// the same time (the `multicast` module); off by default.
    #[serde(default)]
    pub multicast: MulticastConfig,
    /// First installs unpack the image from one HTTP tar stream
    /// (`GET /api/v1/installs/{id}/image.tar`) before the rsync copy, which
    /// then sends only what the stream missed; off: rsync copies everything.
    #[serde(default)]
    pub tar_prefill: bool,
    /// Install an ext root as a block image of the serial (`GET
    /// /api/v1/installs/{id}/root.img`): the filesystem made here with
    /// `mke2fs -d` at the node's root size (once per serial and size) and
    /// written by each node onto its root device, with no per-file copy.
    /// Only for a layout whose one filesystem is an ext3/ext4 root; any other
    /// layout, or a stream that fails, is copied with rsync.
    #[serde(default)]
    pub block_image: bool,
}

impl Default for InstallConfig {
    fn default() -> Self {
        InstallConfig {
            image: default_image(),
            kernel_cmdline: default_cmdline(),
            unknown: None,
            on_failure: Default::default(),
            install_timeout: default_install_timeout(),
            reboot_after_failure: default_reboot_after(),
            sync_interval: 0,
            keep_identity: true,
            layout: None,
            max_copies: None,
            multicast: MulticastConfig::default(),
            tar_prefill: false,
            block_image: false,
        }
    }
}

impl InstallConfig {
    /// The policy in force: the file's, else [`UnknownPolicy::DEFAULT`].
    pub fn unknown_policy(&self) -> UnknownPolicy {
        self.unknown.unwrap_or(UnknownPolicy::DEFAULT)
    }
}

fn yes() -> bool {
    true
}

fn default_image() -> String {
    "default".into()
}
fn default_install_timeout() -> u64 {
    1800
}
fn default_reboot_after() -> u64 {
    60
}
fn default_cmdline() -> String {
    "console=ttyS0,115200".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub mac: String,
    pub hostname: String,
    pub ip: Option<Ipv4Addr>,
    pub image: Option<String>,
    pub disk: Option<String>,
    pub root_mib: Option<u64>,
    pub swap_mib: Option<u64>,
    /// A `[[layout]]` name; default: `install.layout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// How rollout powers this node and sets its next boot (see `power`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcConfig>,
    /// 802.1Q VLAN id the installer and the installed OS use (1..=4094).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// A bond of the node's NICs (see `link`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondConfig>,
}

/// The DHCP settings after validation: only exists when DHCP may really run.
#[derive(Debug, Clone)]
pub struct DhcpPlan {
    pub interface: String,
    pub server_ip: Ipv4Addr,
    pub mode: DhcpMode,
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub netmask: Ipv4Addr,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that need no system access, returning the nodes' MACs normalized (in
    /// `nodes` order). The checks against the machine (does the interface exist, is
    /// the range inside its subnet, is the TFTP root there) make a [`ValidConfig`].
    fn validate(&self) -> Result<Vec<String>, ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "state_dir",
                "is empty",
                "set it to a directory such as /var/lib/rollout",
            ));
        }
        if let Some(problem) = self
            .server
            .admin_token
            .as_deref()
            .and_then(admin_token_problem)
        {
            return Err(invalid("server.admin_token", problem, ADMIN_TOKEN_FIX));
        }
        if self.server.session_lifetime == 0 {
            return Err(invalid(
                "server.session_lifetime",
                "is 0, so no dashboard sign-in would last",
                "give the number of seconds a sign-in lasts, e.g. 28800 (8 hours)",
            ));
        }
        let d = &self.dhcp;
        self.dhcp_endpoint()?;
        if d.mode == DhcpMode::Full {
            let Some([first, last]) = d.range else {
                return Err(invalid(
                    "dhcp.range",
                    "is not set but dhcp.mode is \"full\"",
                    "set dhcp.range = [\"first\", \"last\"] inside the provisioning subnet, or use mode = \"proxy\" when another DHCP server hands out addresses",
                ));
            };
            if u32::from(first) > u32::from(last) {
                return Err(invalid(
                    "dhcp.range",
                    format!("first address {first} is after last address {last}"),
                    "swap the two addresses",
                ));
            }
            if let Some(mask) = d.netmask {
                check_netmask("dhcp.netmask", mask)?;
            }
        }
        if d.mode == DhcpMode::Full && d.new_clients_burst == 0 {
            return Err(invalid(
                "dhcp.new_clients_burst",
                "is 0, so no client without a reservation would ever get an address",
                "use at least 1 (the default is 64), or reserve an ip for every [[node]]",
            ));
        }
        if d.lease_time < 60 {
            return Err(invalid(
                "dhcp.lease_time",
                format!("{} seconds is too short", d.lease_time),
                "use at least 60 seconds",
            ));
        }
        for (i, relay) in d.relays.iter().enumerate() {
            let key = format!("dhcp.relay[{i}]");
            check_netmask(&format!("{key}.netmask"), relay.netmask)?;
            let [first, last] = relay.range;
            if !same_subnet(first, last, relay.netmask) || u32::from(first) > u32::from(last) {
                return Err(invalid(
                    &format!("{key}.range"),
                    format!("{first}..{last} is not an ordered range inside one subnet"),
                    "give the first and last address of the relayed subnet's pool",
                ));
            }
        }
        let mut macs = Vec::with_capacity(self.nodes.len());
        let mut seen_macs = std::collections::HashSet::new();
        let mut seen_names = std::collections::HashSet::new();
        let mut seen_ips = std::collections::HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let key = format!("node[{i}]");
            let mac = normalize_mac(&node.mac).ok_or_else(|| {
                invalid(
                    &format!("{key}.mac"),
                    format!("{:?} is not a MAC address", node.mac),
                    "write it as six hex pairs, e.g. 52:54:00:12:34:56",
                )
            })?;
            if !seen_macs.insert(mac.clone()) {
                return Err(invalid(
                    &format!("{key}.mac"),
                    format!("{mac} is declared twice"),
                    "remove the duplicate [[node]]",
                ));
            }
            if !valid_hostname(&node.hostname) {
                return Err(invalid(
                    &format!("{key}.hostname"),
                    format!("{:?} is not a valid hostname", node.hostname),
                    "use letters, digits and '-', up to 63 characters, not starting with '-'",
                ));
            }
            if !seen_names.insert(node.hostname.clone()) {
                return Err(invalid(
                    &format!("{key}.hostname"),
                    format!("{} is used by two nodes", node.hostname),
                    "give every node its own hostname",
                ));
            }
            if let Some(ip) = node.ip {
                if !seen_ips.insert(ip) {
                    return Err(invalid(
                        &format!("{key}.ip"),
                        format!("{ip} is reserved for two nodes"),
                        "give every node its own address",
                    ));
                }
            }
            if let Some(bmc) = &node.bmc {
                bmc.validate(&format!("{key}.bmc"))?;
            }
            link::validate(&key, &mac, node)?;
            macs.push(mac);
        }
        self.power.validate()?;
        if (1..60).contains(&self.install.sync_interval) {
            return Err(invalid(
                "install.sync_interval",
                format!("{} seconds is too often", self.install.sync_interval),
                "use 0 (no timer) or at least 60 seconds",
            ));
        }
        if matches!(self.install.max_copies, Some(n) if n == 0 || n > 4096) {
            return Err(invalid(
                "install.max_copies",
                format!("{} copies at once", self.install.max_copies.unwrap_or(0)),
                "use 1 to 4096, or leave it out to size it from this machine",
            ));
        }
        self.install.multicast.validate()?;
        check_unknown_policy(d.mode, self.install.unknown, UnknownPolicy::DEFAULT)?;
        image::validate(&self.images)?;
        self.mirroring.validate()?;
        layout::validate(self)?;
        self.store.as_ref().map(PgTarget::try_from).transpose()?;
        Ok(macs)
    }

    /// The interface and address DHCP serves on, when it is on: both must be set.
    fn dhcp_endpoint(&self) -> Result<Option<(String, Ipv4Addr)>, ConfigError> {
        let mode = self.dhcp.mode;
        if mode == DhcpMode::Off {
            return Ok(None);
        }
        let Some(interface) = self.server.interface.clone() else {
            return Err(invalid(
                "server.interface",
                format!("is not set but dhcp.mode is {mode:?}").to_lowercase(),
                "name the provisioning interface explicitly (rollout never guesses where to serve DHCP), or set dhcp.mode = \"off\"",
            ));
        };
        let Some(server_ip) = self.server.address else {
            return Err(invalid(
                "server.address",
                "is not set",
                "set it to this server's address on the provisioning network",
            ));
        };
        Ok(Some((interface, server_ip)))
    }

    /// The DHCP plan if DHCP is to run, checked against the interface's real subnet.
    pub fn dhcp_plan(
        &self,
        iface_addr: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Option<DhcpPlan>, ConfigError> {
        let Some((interface, server_ip)) = self.dhcp_endpoint()? else {
            return Ok(None);
        };
        let Some((if_ip, if_mask)) = iface_addr else {
            return Err(invalid(
                "server.interface",
                format!("interface {interface} has no IPv4 address"),
                "give the interface an address on the provisioning network (ip addr add …) before starting rollout",
            ));
        };
        let netmask = self.dhcp.netmask.unwrap_or(if_mask);
        let range = self.dhcp.range.map(|[a, b]| (a, b));
        if let Some((first, last)) = range {
            if !same_subnet(first, if_ip, if_mask) || !same_subnet(last, if_ip, if_mask) {
                return Err(invalid(
                    "dhcp.range",
                    format!(
                        "{first}..{last} is outside {interface}'s subnet {}/{}",
                        network(if_ip, if_mask),
                        u32::from(if_mask).count_ones()
                    ),
                    "pick a range inside the interface's subnet, or name the right interface",
                ));
            }
            if (u32::from(first)..=u32::from(last)).contains(&u32::from(server_ip)) {
                return Err(invalid(
                    "dhcp.range",
                    format!("{first}..{last} contains the server's own address {server_ip}"),
                    "start the range above or end it below the server's address",
                ));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(ip) = node.ip {
                let relayed = self
                    .dhcp
                    .relays
                    .iter()
                    .any(|r| same_subnet(ip, r.range[0], r.netmask));
                if !same_subnet(ip, if_ip, if_mask) && !relayed {
                    return Err(invalid(
                        &format!("node[{i}].ip"),
                        format!(
                            "{ip} is outside {interface}'s subnet and every [[dhcp.relay]] subnet"
                        ),
                        "reserve an address on the provisioning network or on a relayed subnet",
                    ));
                }
            }
        }
        Ok(Some(DhcpPlan {
            interface,
            server_ip,
            mode: self.dhcp.mode,
            range,
            netmask,
        }))
    }

    pub fn http_base_url(&self) -> String {
        let addr = self.server.address.unwrap_or(Ipv4Addr::LOCALHOST);
        if self.server.http_port == 80 {
            format!("http://{addr}")
        } else {
            format!("http://{addr}:{}", self.server.http_port)
        }
    }

    pub fn listen_addr(&self) -> Ipv4Addr {
        self.server
            .listen
            .or(self.server.address)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The `[[image]]` settings of `name`, if any.
    pub fn image(&self, name: &str) -> Option<&ImageConfig> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Node-local paths of `image`: the defaults, then the image's own. On a
    /// mirror also the primary's: they come with every serial (its `excludes`
    /// file), so the nodes of a mirror keep what the primary's nodes keep.
    pub fn excludes_for(&self, image: &str) -> Vec<String> {
        let mut out: Vec<String> = crate::wire::DEFAULT_EXCLUDES
            .iter()
            .map(|s| s.to_string())
            .chain(
                self.image(image)
                    .into_iter()
                    .flat_map(|i| i.excludes.clone()),
            )
            .collect();
        if self.mirroring.is_mirror() && valid_image_name(image) {
            // The image store's layout (`images::store`): the published serial's file.
            let file = self
                .state_dir
                .join("images")
                .join(image)
                .join("published/excludes");
            for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
                if !line.is_empty() && !out.iter().any(|e| e == line) {
                    out.push(line.to_string());
                }
            }
        }
        out
    }

    pub fn node_by_mac(&self, mac: &str) -> Option<&NodeConfig> {
        let mac = normalize_mac(mac)?;
        self.nodes
            .iter()
            .find(|n| normalize_mac(&n.mac).as_deref() == Some(mac.as_str()))
    }
}

fn check_netmask(key: &str, mask: Ipv4Addr) -> Result<(), ConfigError> {
    let m = u32::from(mask);
    if m.leading_ones() + m.trailing_zeros() != 32 || m == 0 {
        return Err(invalid(
            key,
            format!("{mask} is not a contiguous netmask"),
            "use a mask such as 255.255.255.0",
        ));
    }
    Ok(())
}

pub fn network(ip: Ipv4Addr, mask: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & u32::from(mask))
}

pub fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, mask: Ipv4Addr) -> bool {
    network(a, mask) == network(b, mask)
}

/// Lower-case colon form, or None if it is not a MAC address (kept under this name
/// for its many call sites; the parser is [`crate::mac::MacAddr`]).
pub use crate::mac::normalize as normalize_mac;

/// An image name: letters, digits, `.`, `_`, `-`, starting alphanumeric, at most 64
/// characters, and not ending in `-<digits>`: `web-2` would collide with serial 2 of
/// image `web` in the rsync module namespace. Config and the image store both use it.
pub fn valid_image_name(name: &str) -> bool {
    let ok_chars = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    let serial_like = name
        .rsplit_once('-')
        .is_some_and(|(_, tail)| !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()));
    ok_chars && !serial_like
}

pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests;
