//! `[[node]] bmc = {…}` (how rollout reaches a node's power) and `[power]` (how
//! often and how hard it may ask). The password is never part of the config:
//! `password_file` names a file read at each use, so it is never copied into
//! records, plans, API answers or logs.

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    /// IPMI over LAN (`ipmitool -I lanplus`).
    Ipmi,
    /// DMTF Redfish over HTTP or HTTPS.
    Redfish,
    /// Wake-on-LAN: power on only, the state is unknown.
    Wol,
    /// QEMU's QMP socket (the lab's virtual nodes).
    Qmp,
}

impl BmcDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            BmcDriver::Ipmi => "ipmi",
            BmcDriver::Redfish => "redfish",
            BmcDriver::Wol => "wol",
            BmcDriver::Qmp => "qmp",
        }
    }
}

/// How the next boot is set to the network: with the EFI flag or the legacy one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Uefi,
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BmcConfig {
    pub driver: BmcDriver,
    /// ipmi: the BMC's host name or address; redfish: its base URL
    /// (`http://host[:port]` or `https://host[:port]`).
    pub address: Option<String>,
    /// ipmi: the UDP port (default 623).
    pub port: Option<u16>,
    pub username: Option<String>,
    /// A file holding the password (one line), owner-only: read at each use.
    pub password_file: Option<PathBuf>,
    /// redfish: the system's path, e.g. `/redfish/v1/Systems/1`.
    pub system: Option<String>,
    /// redfish over https: check the BMC's certificate against this machine's
    /// CAs and `ca_file` (false: accept any, e.g. a self-signed one).
    #[serde(default = "super::yes")]
    pub verify_tls: bool,
    /// redfish over https: a PEM file of the CA(s) that signed the BMC's certificate.
    pub ca_file: Option<PathBuf>,
    /// qmp: the QEMU monitor's unix socket.
    pub socket: Option<PathBuf>,
    /// wol: the broadcast address the magic packet goes to (default
    /// 255.255.255.255, sent out of `server.interface`).
    pub broadcast: Option<std::net::Ipv4Addr>,
    /// How the next boot is set to PXE; default: from the firmware the node
    /// PXE-booted with last, else UEFI.
    pub boot_mode: Option<BootMode>,
}

impl BmcConfig {
    /// A BMC of `driver` with nothing else set (the driver's keys are then
    /// filled in; `validate` says which it needs).
    pub fn new(driver: BmcDriver) -> BmcConfig {
        BmcConfig {
            driver,
            address: None,
            port: None,
            username: None,
            password_file: None,
            system: None,
            verify_tls: true,
            ca_file: None,
            socket: None,
            broadcast: None,
            boot_mode: None,
        }
    }

    /// An IPMI BMC at `address:port`, its password in `password_file`.
    pub fn ipmi(address: &str, port: u16, username: &str, password_file: &Path) -> BmcConfig {
        BmcConfig {
            address: Some(address.into()),
            port: Some(port),
            username: Some(username.into()),
            password_file: Some(password_file.into()),
            ..BmcConfig::new(BmcDriver::Ipmi)
        }
    }

    /// A QEMU virtual machine's monitor socket.
    pub fn qmp(socket: &Path) -> BmcConfig {
        BmcConfig {
            socket: Some(socket.into()),
            ..BmcConfig::new(BmcDriver::Qmp)
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PowerConfig {
    /// Seconds between background polls of every BMC's power state (0: never).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: u64,
    /// BMC calls in flight at once (a rack's worth of BMCs is not hammered).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds one BMC call may take before it counts as unreachable.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            poll_interval: default_poll_interval(),
            concurrency: default_concurrency(),
            timeout: default_timeout(),
        }
    }
}

fn default_poll_interval() -> u64 {
    300
}
fn default_concurrency() -> usize {
    8
}
fn default_timeout() -> u64 {
    20
}

impl PowerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if (1..30).contains(&self.poll_interval) {
            return Err(invalid(
                "power.poll_interval",
                format!("{} seconds is too often for BMCs", self.poll_interval),
                "use 0 (no polling) or at least 30 seconds (default 300)",
            ));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(invalid(
                "power.concurrency",
                format!("{} is outside 1..=256", self.concurrency),
                "use a small number such as 8 (BMCs answer slowly and some allow few sessions)",
            ));
        }
        // The CLI waits 30 s for the server's answer to a power request.
        if !(1..=25).contains(&self.timeout) {
            return Err(invalid(
                "power.timeout",
                format!("{} seconds is outside 1..=25", self.timeout),
                "use at most 25 seconds (default 20): the CLI waits 30 s for the server's answer",
            ));
        }
        Ok(())
    }
}

impl BmcConfig {
    /// The checks that need no file system: the keys each driver needs.
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let need = |field: &str, present: bool, example: &str| {
            if present {
                Ok(())
            } else {
                Err(invalid(
                    &format!("{key}.{field}"),
                    format!("is not set but driver is \"{}\"", self.driver.as_str()),
                    format!("add {field} = {example}"),
                ))
            }
        };
        match self.driver {
            BmcDriver::Ipmi => {
                need("address", self.address.is_some(), "\"10.44.1.11\"")?;
                need("username", self.username.is_some(), "\"admin\"")?;
                need(
                    "password_file",
                    self.password_file.is_some(),
                    "\"/etc/rollout/bmc/NODE\" (a file readable by root only)",
                )?;
            }
            BmcDriver::Redfish => {
                need("address", self.address.is_some(), "\"http://10.44.1.11\"")?;
                need("system", self.system.is_some(), "\"/redfish/v1/Systems/1\"")?;
                let address = self.address.as_deref().unwrap_or_default();
                let https = address.starts_with("https://");
                if !https && !address.starts_with("http://") {
                    return Err(invalid(
                        &format!("{key}.address"),
                        format!("{address:?} is not a URL"),
                        "write the base URL, e.g. \"https://10.44.1.11\" or \"http://10.44.1.11\"",
                    ));
                }
                // The authority (between "//" and the first "/") must not carry
                // a user or password: the password belongs in password_file.
                let authority = address
                    .split_once("//")
                    .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
                    .unwrap_or_default();
                if authority.contains('@') {
                    return Err(invalid(
                        &format!("{key}.address"),
                        "carries a user name or password (user:password@host)",
                        "write the address without them and set username and password_file",
                    ));
                }
                if !https && self.ca_file.is_some() {
                    return Err(invalid(
                        &format!("{key}.ca_file"),
                        "is set but the address is http://",
                        "use the BMC's https:// address, or remove ca_file",
                    ));
                }
                if !self.verify_tls && self.ca_file.is_some() {
                    return Err(invalid(
                        &format!("{key}.ca_file"),
                        "is set but verify_tls = false (nothing would check against it)",
                        "remove one of them: ca_file with verify_tls = true checks the BMC's certificate",
                    ));
                }
                if !self.system.as_deref().unwrap_or_default().starts_with('/') {
                    return Err(invalid(
                        &format!("{key}.system"),
                        "is not an absolute path",
                        "write it as \"/redfish/v1/Systems/ID\"",
                    ));
                }
                if self.username.is_some() != self.password_file.is_some() {
                    return Err(invalid(
                        key,
                        "has only one of username and password_file",
                        "give both (HTTP basic authentication) or neither",
                    ));
                }
            }
            BmcDriver::Qmp => need(
                "socket",
                self.socket.is_some(),
                "\"/run/rollout/node1.qmp\"",
            )?,
            BmcDriver::Wol => {}
        }
        Ok(())
    }
}

/// The check against the file system: a password file must exist, be a regular
/// file and not be readable by everyone (a BMC password lets its holder power a
/// rack off). Called by `serve` and `check-config` (preflight), and again at use.
pub fn check_password_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    check_secret_file(key, path, "the BMC password")
}

/// [`check_password_file`] for any secret (`secret` names it in the fix):
/// also the shared lease database's `[store] password_file`.
pub fn check_secret_file(key: &str, path: &Path, secret: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        invalid(
            key,
            format!("cannot read {}: {e}", path.display()),
            format!("create it holding {secret} (one line) with mode 0600"),
        )
    })?;
    if !meta.is_file() {
        return Err(invalid(
            key,
            format!("{} is not a regular file", path.display()),
            format!("point it at a file holding {secret}"),
        ));
    }
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(invalid(
            key,
            format!(
                "{} is readable by every user (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
            format!("chmod 600 {}", path.display()),
        ));
    }
    Ok(())
}

/// Every `[[node]]`'s password file checked (see [`check_password_file`]),
/// and its `ca_file` readable (a typo there would fail every https call).
pub fn check_password_files(nodes: &[super::NodeConfig]) -> Result<(), ConfigError> {
    for (i, node) in nodes.iter().enumerate() {
        let Some(bmc) = &node.bmc else { continue };
        if let Some(path) = bmc.password_file.as_deref() {
            check_password_file(&format!("node[{i}].bmc.password_file"), path)?;
        }
        if let Some(path) = bmc.ca_file.as_deref() {
            std::fs::File::open(path).map_err(|e| {
                invalid(
                    &format!("node[{i}].bmc.ca_file"),
                    format!("cannot read {}: {e}", path.display()),
                    "point it at the PEM certificate of the CA that signed the BMC's certificate",
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(bmc: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "state_dir = \"/x\"\n[[node]]\nmac = \"52:54:00:aa:00:01\"\nhostname = \"n1\"\nbmc = {bmc}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn each_driver_names_the_key_it_misses() {
        let e =
            parse(r#"{ driver = "ipmi", address = "10.0.0.1", username = "admin" }"#).unwrap_err();
        assert!(e.contains("node[0].bmc.password_file"), "{e}");
        assert!(e.contains("driver is \"ipmi\""), "{e}");
        let e = parse(r#"{ driver = "redfish", address = "http://h" }"#).unwrap_err();
        assert!(e.contains("node[0].bmc.system"), "{e}");
        let e = parse(r#"{ driver = "qmp" }"#).unwrap_err();
        assert!(e.contains("node[0].bmc.socket"), "{e}");
        let e = parse(r#"{ driver = "telnet" }"#).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        let e = parse(r#"{ driver = "ipmi", password = "x" }"#).unwrap_err();
        assert!(e.contains("unknown field `password`"), "{e}");
        parse(r#"{ driver = "wol" }"#).unwrap();
    }

    #[test]
    fn https_with_or_without_verification() {
        let sys = r#"system = "/redfish/v1/Systems/1""#;
        let c = parse(&format!(
            r#"{{ driver = "redfish", address = "https://bmc", {sys} }}"#
        ))
        .unwrap();
        let b = c.nodes[0].bmc.as_ref().unwrap();
        assert!(b.verify_tls, "verification is the default");
        let c = parse(&format!(
            r#"{{ driver = "redfish", address = "https://bmc", {sys}, verify_tls = false }}"#
        ))
        .unwrap();
        assert!(!c.nodes[0].bmc.as_ref().unwrap().verify_tls);
        parse(&format!(
            r#"{{ driver = "redfish", address = "https://bmc", {sys}, ca_file = "/etc/rollout/bmc-ca.pem" }}"#
        ))
        .unwrap();
        let e = parse(&format!(
            r#"{{ driver = "redfish", address = "http://bmc", {sys}, ca_file = "/x.pem" }}"#
        ))
        .unwrap_err();
        assert!(
            e.contains("node[0].bmc.ca_file") && e.contains("http://"),
            "{e}"
        );
        let e = parse(&format!(
            r#"{{ driver = "redfish", address = "https://bmc", {sys}, verify_tls = false, ca_file = "/x.pem" }}"#
        ))
        .unwrap_err();
        assert!(e.contains("verify_tls = false"), "{e}");
        let e = parse(&format!(
            r#"{{ driver = "redfish", address = "ftp://bmc", {sys} }}"#
        ))
        .unwrap_err();
        assert!(e.contains("is not a URL"), "{e}");
    }

    #[test]
    fn a_missing_ca_file_is_refused_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let c = parse(&format!(
            r#"{{ driver = "redfish", address = "https://bmc", system = "/redfish/v1/Systems/1", ca_file = "{}" }}"#,
            ca.display()
        ))
        .unwrap();
        let e = check_password_files(&c.nodes).unwrap_err().to_string();
        assert!(
            e.contains("node[0].bmc.ca_file") && e.contains("ca.pem"),
            "{e}"
        );
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        check_password_files(&c.nodes).unwrap();
    }

    #[test]
    fn a_password_in_the_address_is_refused_without_being_repeated() {
        let e = parse(r#"{ driver = "redfish", address = "https://admin:hunter2@bmc", system = "/redfish/v1/Systems/1" }"#)
            .unwrap_err();
        assert!(
            e.contains("node[0].bmc.address") && e.contains("password_file"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    /// The config holds a path to the password, never the password: what
    /// `Debug` (logs) and serialization (any API that echoes config) show of a
    /// BMC cannot contain it.
    #[test]
    fn debug_and_serialization_of_a_bmc_never_hold_the_password() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "Sup3r-Secret-BMC\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        for bmc in [
            format!(
                r#"{{ driver = "ipmi", address = "10.0.0.1", username = "admin", password_file = "{}" }}"#,
                pw.display()
            ),
            format!(
                r#"{{ driver = "redfish", address = "https://bmc", system = "/redfish/v1/Systems/1", username = "admin", password_file = "{}" }}"#,
                pw.display()
            ),
        ] {
            let c = parse(&bmc).unwrap();
            let b = c.nodes[0].bmc.as_ref().unwrap();
            let file = b.password_file.as_ref().unwrap();
            check_password_file("k", file).unwrap();
            assert!(std::fs::read_to_string(file)
                .unwrap()
                .contains("Sup3r-Secret-BMC"));
            for text in [
                format!("{b:?}"),
                format!("{:?}", c.nodes[0]),
                serde_json::to_string(b).unwrap(),
                toml::to_string(b).unwrap(),
            ] {
                assert!(!text.contains("Sup3r-Secret-BMC"), "{text}");
                assert!(text.contains("password_file"), "{text}");
            }
        }
    }

    #[test]
    fn power_bounds() {
        let c = Config::parse("state_dir = \"/x\"\n").unwrap();
        assert_eq!(c.power.poll_interval, 300);
        for (toml, key) in [
            ("poll_interval = 5", "power.poll_interval"),
            ("concurrency = 0", "power.concurrency"),
            ("timeout = 0", "power.timeout"),
        ] {
            let e = Config::parse(&format!("state_dir = \"/x\"\n[power]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        Config::parse("state_dir = \"/x\"\n[power]\npoll_interval = 0\n").unwrap();
    }

    #[test]
    fn a_missing_or_world_readable_password_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let e = check_password_file("node[0].bmc.password_file", &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node[0].bmc.password_file") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_password_file("node[0].bmc.password_file", &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("readable by every user") && e.contains("chmod 600"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_password_file("k", &path).unwrap();
    }
}
