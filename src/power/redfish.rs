//! A small client of the DMTF Redfish schema: a system's `PowerState`, its
//! `ComputerSystem.Reset` action and its one-time boot override, over http or
//! https (`verify_tls`, `ca_file`: see `tls`). The credentials, when set, go in
//! an HTTP basic `Authorization` header.

use super::{read_password, redact, tls, PowerDriver, PowerError, PowerState, Target};
use serde_json::{json, Value};
use std::path::PathBuf;

/// `PowerState` of a ComputerSystem → ours (transitions count as where they go).
pub fn parse_power_state(system: &Value) -> Option<PowerState> {
    match system.get("PowerState")?.as_str()? {
        "On" | "PoweringOn" => Some(PowerState::On),
        "Off" | "PoweringOff" => Some(PowerState::Off),
        _ => Some(PowerState::Unknown),
    }
}

/// The reset action's target and allowed types, from the system resource.
pub fn reset_action(system: &Value, system_path: &str) -> (String, Vec<String>) {
    let action = &system["Actions"]["#ComputerSystem.Reset"];
    let target = action["target"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{system_path}/Actions/ComputerSystem.Reset"));
    let allowed = action["ResetType@Redfish.AllowableValues"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (target, allowed)
}

/// The ResetType for a power cycle: `PowerCycle` when the BMC offers it, else
/// `ForceRestart` (what most BMCs and the emulators implement).
pub fn cycle_type(allowed: &[String]) -> &'static str {
    if allowed.iter().any(|a| a == "PowerCycle") {
        "PowerCycle"
    } else {
        "ForceRestart"
    }
}

/// The PATCH body that makes the next boot (only) a network boot.
pub fn boot_once_pxe_body(efi: bool) -> Value {
    json!({"Boot": {
        "BootSourceOverrideTarget": "Pxe",
        "BootSourceOverrideEnabled": "Once",
        "BootSourceOverrideMode": if efi { "UEFI" } else { "Legacy" },
    }})
}

/// A Redfish error body's message (`error.message` and its extended info).
pub fn error_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return body.chars().take(300).collect();
    };
    let e = &v["error"];
    let mut parts: Vec<String> = e["message"]
        .as_str()
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(infos) = e["@Message.ExtendedInfo"].as_array() {
        parts.extend(
            infos
                .iter()
                .filter_map(|i| i["Message"].as_str().map(str::to_string)),
        );
    }
    if parts.is_empty() {
        body.chars().take(300).collect()
    } else {
        parts.join("; ")
    }
}

/// How a Redfish call failed, as the HTTP client reports it.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    /// The BMC answered with an error status and this body.
    Status {
        code: u16,
        body: &'a str,
        operation: &'a str,
    },
    /// No answer: connection, timeout, or TLS (`certificate`: the BMC's
    /// certificate was refused).
    Transport { text: &'a str, certificate: bool },
}

/// The typed error for a failed call to the BMC at `base`: 401/403 are the
/// credentials, other statuses a rejected operation, a refused certificate its
/// own case; `password` is cut out of whatever the BMC or the client said.
pub fn failure_error(node: &str, base: &str, user: &str, f: Failure, password: &str) -> PowerError {
    let (node, bmc) = (node.to_string(), base.to_string());
    match f {
        Failure::Status {
            code,
            body,
            operation,
        } => {
            let detail = redact(&format!("HTTP {code}: {}", error_message(body)), password);
            if code == 401 || code == 403 {
                PowerError::BadCredentials {
                    node,
                    bmc,
                    user: user.into(),
                    detail,
                }
            } else {
                PowerError::Rejected {
                    node,
                    bmc,
                    operation: operation.into(),
                    detail,
                }
            }
        }
        Failure::Transport { text, certificate } => {
            let detail = redact(text, password);
            if certificate {
                PowerError::Certificate { node, bmc, detail }
            } else {
                PowerError::Unreachable { node, bmc, detail }
            }
        }
    }
}

pub struct Redfish {
    node: String,
    base: String,
    system: String,
    user: Option<String>,
    password_file: Option<PathBuf>,
    agent: ureq::Agent,
}

impl Redfish {
    pub fn new(t: &Target) -> Result<Redfish, PowerError> {
        let missing = |key: &str| PowerError::Tool {
            node: t.node.into(),
            detail: format!("bmc.{key} is not set for the redfish driver"),
        };
        let base = t.bmc.address.clone().ok_or_else(|| missing("address"))?;
        let mut agent = ureq::AgentBuilder::new().timeout(t.timeout).redirects(0);
        if base.starts_with("https://") {
            let tls = super::tls::client_config(t.bmc.verify_tls, t.bmc.ca_file.as_deref())
                .map_err(|detail| PowerError::Tool {
                    node: t.node.into(),
                    detail,
                })?;
            agent = agent.tls_config(tls);
        }
        Ok(Redfish {
            node: t.node.into(),
            base: base.trim_end_matches('/').to_string(),
            system: t.bmc.system.clone().ok_or_else(|| missing("system"))?,
            user: t.bmc.username.clone(),
            password_file: t.bmc.password_file.clone(),
            agent: agent.build(),
        })
    }

    /// A path on the BMC; an absolute URL (some BMCs give action targets so)
    /// only when it is on the BMC's own base, so the credentials go nowhere else.
    fn url(&self, path: &str) -> String {
        if path.starts_with(&format!("{}/", self.base)) {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// One request; `body` is sent as JSON. Returns the answer's JSON (or Null).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, PowerError> {
        let mut req = self
            .agent
            .request(method, &self.url(path))
            .set("Accept", "application/json");
        let mut password = String::new();
        if let (Some(user), Some(file)) = (&self.user, &self.password_file) {
            use base64::Engine;
            password = read_password(&self.node, file)?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            req = req.set("Authorization", &format!("Basic {token}"));
        }
        let operation = format!("{method} {path}");
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => {
                let text = resp.into_string().unwrap_or_default();
                Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(ureq::Error::Status(code, resp)) => Err(self.failure(
                Failure::Status {
                    code,
                    body: &resp.into_string().unwrap_or_default(),
                    operation: &operation,
                },
                &password,
            )),
            Err(ureq::Error::Transport(t)) => {
                let certificate = tls::is_certificate_error(&t);
                Err(self.failure(
                    Failure::Transport {
                        text: &t.to_string(),
                        certificate,
                    },
                    &password,
                ))
            }
        }
    }

    fn failure(&self, f: Failure, password: &str) -> PowerError {
        failure_error(
            &self.node,
            &self.base,
            self.user.as_deref().unwrap_or_default(),
            f,
            password,
        )
    }

    fn reset(&self, reset_type: Option<&str>) -> Result<(), PowerError> {
        let system = self.call("GET", &self.system, None)?;
        let (target, allowed) = reset_action(&system, &self.system);
        let reset_type = reset_type.unwrap_or_else(|| cycle_type(&allowed));
        self.call("POST", &target, Some(json!({"ResetType": reset_type})))
            .map(drop)
    }
}

impl PowerDriver for Redfish {
    fn status(&self) -> Result<PowerState, PowerError> {
        let system = self.call("GET", &self.system, None)?;
        parse_power_state(&system).ok_or_else(|| PowerError::Tool {
            node: self.node.clone(),
            detail: format!(
                "{}{} has no PowerState; check bmc.system names a ComputerSystem (GET {}/redfish/v1/Systems lists them)",
                self.base, self.system, self.base
            ),
        })
    }
    fn on(&self) -> Result<(), PowerError> {
        self.reset(Some("On"))
    }
    fn off(&self) -> Result<(), PowerError> {
        self.reset(Some("ForceOff"))
    }
    fn cycle(&self) -> Result<(), PowerError> {
        self.reset(None)
    }
    fn boot_once_pxe(&self, efi: bool) -> Result<(), PowerError> {
        self.call("PATCH", &self.system, Some(boot_once_pxe_body(efi)))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_state_and_reset_action_from_the_system() {
        let sys = json!({
            "PowerState": "On",
            "Actions": {"#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart"]
            }}
        });
        assert_eq!(parse_power_state(&sys), Some(PowerState::On));
        let (target, allowed) = reset_action(&sys, "/redfish/v1/Systems/abc");
        assert_eq!(
            target,
            "/redfish/v1/Systems/abc/Actions/ComputerSystem.Reset"
        );
        assert_eq!(cycle_type(&allowed), "ForceRestart");
        assert_eq!(cycle_type(&["PowerCycle".to_string()]), "PowerCycle");
        let (target, _) = reset_action(&json!({}), "/redfish/v1/Systems/1");
        assert_eq!(target, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset");
        assert_eq!(
            parse_power_state(&json!({"PowerState": "Off"})),
            Some(PowerState::Off)
        );
        assert_eq!(parse_power_state(&json!({})), None);
    }

    #[test]
    fn boot_override_body() {
        assert_eq!(
            boot_once_pxe_body(true),
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
        );
        assert_eq!(
            boot_once_pxe_body(false)["Boot"]["BootSourceOverrideMode"],
            "Legacy"
        );
    }

    #[test]
    fn failures_are_typed_name_node_and_bmc_and_never_the_password() {
        let pw = "s3cr3t-pw";
        let base = "https://10.44.1.11";
        // A BMC that echoes what it was sent.
        let body = format!(r#"{{"error": {{"message": "bad login admin:{pw}"}}}}"#);
        let e = failure_error(
            "n1",
            base,
            "admin",
            Failure::Status {
                code: 401,
                body: &body,
                operation: "GET /redfish/v1/Systems/1",
            },
            pw,
        );
        assert!(matches!(e, PowerError::BadCredentials { .. }), "{e:?}");
        let t = e.to_string();
        assert!(t.starts_with("n1: the BMC at https://10.44.1.11"), "{t}");
        assert!(
            t.contains("HTTP 401") && t.contains("bmc.password_file"),
            "{t}"
        );
        assert!(!t.contains(pw) && t.contains("<password>"), "{t}");
        let e = failure_error(
            "n1",
            base,
            "admin",
            Failure::Status {
                code: 400,
                body: r#"{"error": {"message": "ResetType Foo is not supported"}}"#,
                operation: "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            },
            pw,
        );
        let t = e.to_string();
        assert!(matches!(e, PowerError::Rejected { .. }), "{e:?}");
        assert!(
            t.contains("rejected `POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset`")
                && t.contains("ResetType Foo")
                && t.contains("privilege"),
            "{t}"
        );
        let e = failure_error(
            "n1",
            base,
            "admin",
            Failure::Transport {
                text: "invalid peer certificate: UnknownIssuer",
                certificate: true,
            },
            pw,
        );
        let t = e.to_string();
        assert!(matches!(e, PowerError::Certificate { .. }), "{e:?}");
        for want in ["n1", base, "certificate", "ca_file", "verify_tls = false"] {
            assert!(t.contains(want), "{want} missing: {t}");
        }
        let e = failure_error(
            "n1",
            base,
            "",
            Failure::Transport {
                text: "Connection refused",
                certificate: false,
            },
            pw,
        );
        assert!(matches!(e, PowerError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("ping it"), "{e}");
    }

    #[test]
    fn error_bodies_are_read() {
        let body = r#"{"error": {"message": "A general error has occurred.", "@Message.ExtendedInfo": [{"Message": "ResetType Foo is not supported"}]}}"#;
        assert_eq!(
            error_message(body),
            "A general error has occurred.; ResetType Foo is not supported"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
