//! Power control of nodes through their BMCs: IPMI (`ipmitool`), Redfish,
//! Wake-on-LAN and the lab's QEMU monitor (QMP). Each driver is a
//! [`PowerDriver`]; what a driver sends is built by pure functions (unit-tested
//! per driver), and every failure is a [`PowerError`] naming the node, the BMC
//! and what to check. Passwords are read from `password_file` at each call and
//! never appear in an error, a log line or a record.

pub mod ipmi;
pub mod known;
pub mod metered;
pub mod poller;
pub mod qmp;
pub mod redfish;
pub mod relay;
pub mod tls;
pub mod wol;

use crate::config::{BmcConfig, BmcDriver, BootMode};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum PowerState {
    On,
    Off,
    /// The driver cannot tell (Wake-on-LAN).
    Unknown,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        }
    }
}

/// What an operator asks of a node's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum PowerAction {
    Status,
    On,
    Off,
    Cycle,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Status => "status",
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
        }
    }

    pub fn parse(s: &str) -> Option<PowerAction> {
        match s {
            "status" => Some(PowerAction::Status),
            "on" => Some(PowerAction::On),
            "off" => Some(PowerAction::Off),
            "cycle" => Some(PowerAction::Cycle),
            _ => None,
        }
    }
}

/// Why a BMC call failed. Each message names the node, the BMC and what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    #[error("{node}: the BMC at {bmc} does not answer ({detail}); check that the BMC is powered and cabled, that this server reaches it (ping it), and the address and port in the node's bmc settings")]
    Unreachable {
        node: String,
        bmc: String,
        detail: String,
    },
    #[error("{node}: the BMC at {bmc} refused the credentials of user {user:?} ({detail}); check bmc.username and the password in bmc.password_file against the BMC's user list")]
    BadCredentials {
        node: String,
        bmc: String,
        user: String,
        detail: String,
    },
    #[error("{node}: the BMC at {bmc} rejected `{operation}` ({detail}); check that the BMC user has the operator or administrator privilege and the BMC's own log")]
    Rejected {
        node: String,
        bmc: String,
        operation: String,
        detail: String,
    },
    #[error("{node}: the BMC at {bmc} presented a certificate this server does not trust ({detail}); set ca_file = \"/path/to/bmc-ca.pem\" in the node's bmc (the CA that signed the BMC's certificate) or install that CA on this server (update-ca-certificates), or set verify_tls = false to accept the BMC's self-signed certificate")]
    Certificate {
        node: String,
        bmc: String,
        detail: String,
    },
    #[error("{node}: cannot use the BMC password: {detail}")]
    Password { node: String, detail: String },
    #[error("{node}: the {driver} driver cannot {operation}: {why}")]
    Unsupported {
        node: String,
        driver: &'static str,
        operation: &'static str,
        why: &'static str,
    },
    #[error("{node}: {detail}")]
    Tool { node: String, detail: String },
}

/// Power control of one node.
pub trait PowerDriver: Send + Sync {
    fn status(&self) -> Result<PowerState, PowerError>;
    fn on(&self) -> Result<(), PowerError>;
    fn off(&self) -> Result<(), PowerError>;
    fn cycle(&self) -> Result<(), PowerError>;
    /// The next boot (only) from the network; `efi`: the UEFI flavour.
    fn boot_once_pxe(&self, efi: bool) -> Result<(), PowerError>;
}

/// What the node is and how to reach its BMC.
pub struct Target<'a> {
    pub node: &'a str,
    pub mac: &'a str,
    pub bmc: &'a BmcConfig,
    /// The provisioning interface (Wake-on-LAN goes out of it).
    pub interface: Option<&'a str>,
    /// Per-call limit.
    pub timeout: Duration,
}

/// The driver the node's `bmc.driver` names.
pub fn driver(t: &Target) -> Result<Box<dyn PowerDriver>, PowerError> {
    Ok(match t.bmc.driver {
        BmcDriver::Ipmi => Box::new(ipmi::Ipmi::new(t)?),
        BmcDriver::Redfish => Box::new(redfish::Redfish::new(t)?),
        BmcDriver::Wol => Box::new(wol::Wol::new(t)?),
        BmcDriver::Qmp => Box::new(qmp::QmpPower::new(t)?),
    })
}

/// Runs `action`; the state afterwards for `status`, `None` otherwise.
pub fn run(d: &dyn PowerDriver, action: PowerAction) -> Result<Option<PowerState>, PowerError> {
    match action {
        PowerAction::Status => return d.status().map(Some),
        PowerAction::On => d.on()?,
        PowerAction::Off => d.off()?,
        PowerAction::Cycle => d.cycle()?,
    }
    Ok(None)
}

/// The power steps of "reinstall now", given the state before: the next boot
/// from the network, then a cycle if the node runs, else a power-on (a BMC
/// refuses to cycle a node that is off).
pub fn reinstall_step(before: PowerState) -> PowerAction {
    match before {
        PowerState::On => PowerAction::Cycle,
        PowerState::Off | PowerState::Unknown => PowerAction::On,
    }
}

/// Whether the next boot is set to PXE with the EFI flag: the config says, else
/// the firmware the node last PXE-booted with ("efi…" in the record), else UEFI.
pub fn wants_efi(mode: Option<BootMode>, recorded_firmware: Option<&str>) -> bool {
    match mode {
        Some(BootMode::Uefi) => true,
        Some(BootMode::Legacy) => false,
        None => recorded_firmware.is_none_or(|f| !f.contains("bios")),
    }
}

/// Reinstall's power half: PXE once, then cycle or on. Returns the actions run.
pub fn reinstall_now(d: &dyn PowerDriver, efi: bool) -> Result<Vec<&'static str>, PowerError> {
    let before = d.status()?;
    d.boot_once_pxe(efi)?;
    let mut done = vec!["boot_once_pxe"];
    let step = reinstall_step(before);
    run(d, step)?;
    done.push(step.as_str());
    Ok(done)
}

/// Reads the password file (checked first: it must exist and not be readable
/// by everyone) and returns its first line.
pub fn read_password(node: &str, path: &Path) -> Result<String, PowerError> {
    let perr = |detail: String| PowerError::Password {
        node: node.into(),
        detail,
    };
    crate::config::check_password_file("bmc.password_file", path)
        .map_err(|e| perr(e.to_string()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| perr(format!("cannot read {}: {e}", path.display())))?;
    let pw = text.lines().next().unwrap_or_default().to_string();
    if pw.is_empty() {
        return Err(perr(format!(
            "{} is empty; write the BMC password on its first line",
            path.display()
        )));
    }
    Ok(pw)
}

/// `text` with every occurrence of `secret` replaced: a tool's or a BMC's
/// message may echo what it was sent, and errors go to logs and the API.
pub fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    text.replace(secret, "<password>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_node_is_cycled_one_that_is_off_powered_on() {
        assert_eq!(reinstall_step(PowerState::On), PowerAction::Cycle);
        assert_eq!(reinstall_step(PowerState::Off), PowerAction::On);
        assert_eq!(reinstall_step(PowerState::Unknown), PowerAction::On);
    }

    #[test]
    fn efi_flag_from_config_then_record() {
        assert!(wants_efi(Some(BootMode::Uefi), Some("pcbios")));
        assert!(!wants_efi(Some(BootMode::Legacy), None));
        assert!(!wants_efi(None, Some("pcbios")));
        assert!(wants_efi(None, Some("efi64")));
        assert!(wants_efi(None, None));
    }

    #[test]
    fn redaction_hides_the_password() {
        assert_eq!(
            redact("user admin pw s3cr3t failed", "s3cr3t"),
            "user admin pw <password> failed"
        );
        assert_eq!(redact("nothing", ""), "nothing");
    }

    #[test]
    fn errors_name_node_bmc_and_what_to_check() {
        let e = PowerError::BadCredentials {
            node: "rack1-node1".into(),
            bmc: "10.44.1.11:623".into(),
            user: "admin".into(),
            detail: "RAKP 2 HMAC is invalid".into(),
        }
        .to_string();
        assert!(
            e.starts_with("rack1-node1: the BMC at 10.44.1.11:623"),
            "{e}"
        );
        assert!(
            e.contains("check bmc.username and the password in bmc.password_file"),
            "{e}"
        );
        let e = PowerError::Unreachable {
            node: "n".into(),
            bmc: "b".into(),
            detail: "timeout".into(),
        }
        .to_string();
        assert!(e.contains("does not answer") && e.contains("ping"), "{e}");
    }

    #[test]
    fn password_file_first_line_only_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password("n1", &p).unwrap_err().to_string();
        assert!(e.contains("n1") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password("n1", &p).unwrap(), "hunter2");
    }
}
