//! IPMI over LAN through `ipmitool -I lanplus`, as operators drive BMCs. The
//! password goes to ipmitool in its environment (`-E`, IPMI_PASSWORD), never on
//! the command line where `ps` shows it. `-v` makes ipmitool say why a session
//! failed (a bad HMAC is a wrong password; no answer to Get Auth Capabilities is
//! an unreachable BMC), which [`classify`] turns into a typed error.

use super::{read_password, redact, PowerDriver, PowerError, PowerState, Target};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One ipmitool operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Status,
    On,
    Off,
    Cycle,
    BootPxe { efi: bool },
}

impl Op {
    /// The ipmitool arguments after the connection options.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Op::Status => &["chassis", "power", "status"],
            Op::On => &["chassis", "power", "on"],
            Op::Off => &["chassis", "power", "off"],
            Op::Cycle => &["chassis", "power", "cycle"],
            Op::BootPxe { efi: true } => &["chassis", "bootdev", "pxe", "options=efiboot"],
            Op::BootPxe { efi: false } => &["chassis", "bootdev", "pxe"],
        }
    }
}

/// The connection options: lanplus, host, port, user, password from the
/// environment, a per-try timeout and one retry.
pub fn connection_args(host: &str, port: u16, user: &str, timeout: Duration) -> Vec<String> {
    // Two tries and the session set-up fit in `timeout`; the caller kills
    // ipmitool at `timeout` anyway.
    let per_try = (timeout.as_secs() / 3).max(1);
    [
        "-I",
        "lanplus",
        "-H",
        host,
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-E",
        "-v",
        "-N",
        &per_try.to_string(),
        "-R",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What kind of failure ipmitool's stderr describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Credentials,
    Unreachable,
    Rejected,
}

/// Reads ipmitool's stderr (with `-v`) for the cause of a failure.
pub fn classify(stderr: &str) -> Failure {
    let s = stderr.to_ascii_lowercase();
    const CREDENTIALS: &[&str] = &[
        "hmac is invalid",
        "unauthorized name",
        "invalid user name",
        "invalid integrity check",
        "insufficient privilege",
        "invalid session id",
        "password",
    ];
    const UNREACHABLE: &[&str] = &[
        "get auth capabilities error",
        "no response from remote controller",
        "error issuing get channel authentication capabilities",
        "connection refused",
        "unable to establish",
        "address lookup",
        "no route to host",
    ];
    if CREDENTIALS.iter().any(|m| s.contains(m)) {
        Failure::Credentials
    } else if UNREACHABLE.iter().any(|m| s.contains(m)) {
        Failure::Unreachable
    } else {
        Failure::Rejected
    }
}

/// `Chassis Power is on|off` → the state.
pub fn parse_status(stdout: &str) -> Option<PowerState> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("Chassis Power is"))?;
    match line.trim().rsplit(' ').next()? {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        _ => None,
    }
}

/// The lines of stderr worth showing: `-v` adds chatter that explains nothing.
fn useful(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Loading IANA")
                && !l.starts_with("Running Get")
                && !l.contains("Get Channel Cipher Suites")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub struct Ipmi {
    node: String,
    host: String,
    port: u16,
    user: String,
    password_file: PathBuf,
    timeout: Duration,
}

impl Ipmi {
    pub fn new(t: &Target) -> Result<Ipmi, PowerError> {
        let missing = |key: &str| PowerError::Tool {
            node: t.node.into(),
            detail: format!("bmc.{key} is not set for the ipmi driver"),
        };
        Ok(Ipmi {
            node: t.node.into(),
            host: t.bmc.address.clone().ok_or_else(|| missing("address"))?,
            port: t.bmc.port.unwrap_or(623),
            user: t.bmc.username.clone().ok_or_else(|| missing("username"))?,
            password_file: t
                .bmc
                .password_file
                .clone()
                .ok_or_else(|| missing("password_file"))?,
            timeout: t.timeout,
        })
    }

    fn bmc(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs ipmitool for `op` and returns its stdout, or the typed failure.
    fn call(&self, op: Op) -> Result<String, PowerError> {
        let password = read_password(&self.node, &self.password_file)?;
        let mut child = Command::new("ipmitool")
            .args(connection_args(
                &self.host,
                self.port,
                &self.user,
                self.timeout,
            ))
            .args(op.args())
            .env("IPMI_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| PowerError::Tool {
                node: self.node.clone(),
                detail: format!("cannot run ipmitool: {e}; install it (Debian package ipmitool)"),
            })?;
        // Readers on threads: a chatty ipmitool must not block on a full pipe.
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let stdout = out_t.join().unwrap_or_default();
        // Redacted in `failure_error`, after it is classified.
        let stderr = err_t.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(PowerError::Unreachable {
                node: self.node.clone(),
                bmc: self.bmc(),
                detail: format!("no answer within {} s", self.timeout.as_secs()),
            });
        };
        if status.success() {
            return Ok(stdout);
        }
        Err(failure_error(
            &self.node,
            &self.bmc(),
            &self.user,
            op,
            &status.to_string(),
            &stderr,
            &password,
        ))
    }
}

/// The typed error for a failed ipmitool run against `bmc`, from its stderr
/// (classified by [`classify`]); `password` is cut out of what it said.
pub fn failure_error(
    node: &str,
    bmc: &str,
    user: &str,
    op: Op,
    exit: &str,
    stderr: &str,
    password: &str,
) -> PowerError {
    let kind = classify(stderr);
    let stderr = redact(stderr, password);
    let detail = useful(&stderr);
    let detail = if detail.is_empty() {
        format!("ipmitool exited with {exit}")
    } else {
        detail
    };
    let (node, bmc) = (node.to_string(), bmc.to_string());
    match kind {
        Failure::Credentials => PowerError::BadCredentials {
            node,
            bmc,
            user: user.into(),
            detail,
        },
        Failure::Unreachable => PowerError::Unreachable { node, bmc, detail },
        Failure::Rejected => PowerError::Rejected {
            node,
            bmc,
            operation: format!("ipmitool {}", op.args().join(" ")),
            detail,
        },
    }
}

impl PowerDriver for Ipmi {
    fn status(&self) -> Result<PowerState, PowerError> {
        let out = self.call(Op::Status)?;
        parse_status(&out).ok_or_else(|| PowerError::Tool {
            node: self.node.clone(),
            detail: format!(
                "the BMC at {} answered `chassis power status` with {:?}, not \"Chassis Power is on|off\"",
                self.bmc(),
                out.trim()
            ),
        })
    }
    fn on(&self) -> Result<(), PowerError> {
        self.call(Op::On).map(drop)
    }
    fn off(&self) -> Result<(), PowerError> {
        self.call(Op::Off).map(drop)
    }
    fn cycle(&self) -> Result<(), PowerError> {
        self.call(Op::Cycle).map(drop)
    }
    fn boot_once_pxe(&self, efi: bool) -> Result<(), PowerError> {
        self.call(Op::BootPxe { efi }).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_sequences() {
        let args = connection_args("10.44.1.11", 623, "admin", Duration::from_secs(20));
        assert_eq!(
            args.join(" "),
            "-I lanplus -H 10.44.1.11 -p 623 -U admin -E -v -N 6 -R 1"
        );
        assert_eq!(Op::Status.args(), ["chassis", "power", "status"]);
        assert_eq!(Op::Cycle.args(), ["chassis", "power", "cycle"]);
        assert_eq!(
            Op::BootPxe { efi: true }.args(),
            ["chassis", "bootdev", "pxe", "options=efiboot"]
        );
        assert_eq!(
            Op::BootPxe { efi: false }.args(),
            ["chassis", "bootdev", "pxe"]
        );
        // The password is never an argument.
        assert!(!args.iter().any(|a| a == "-P"));
    }

    #[test]
    fn status_output_is_parsed() {
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_status("garbage"), None);
    }

    #[test]
    fn errors_name_node_bmc_and_what_to_check_never_the_password() {
        let pw = "pa55-word";
        let fail = |op: Op, stderr: &str| {
            failure_error(
                "n1",
                "10.44.1.11:623",
                "admin",
                op,
                "exit status: 1",
                stderr,
                pw,
            )
        };
        let e = fail(
            Op::Status,
            &format!("> RAKP 2 HMAC is invalid (password {pw})\n"),
        );
        assert!(matches!(e, PowerError::BadCredentials { .. }), "{e:?}");
        let t = e.to_string();
        assert!(
            t.starts_with(
                "n1: the BMC at 10.44.1.11:623 refused the credentials of user \"admin\""
            ),
            "{t}"
        );
        assert!(!t.contains(pw) && t.contains("<password>"), "{t}");
        let e = fail(Op::Status, "Get Auth Capabilities error\n");
        assert!(matches!(e, PowerError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("ping it"), "{e}");
        let t = fail(
            Op::BootPxe { efi: true },
            "Set Boot Device to pxe failed: Invalid data field in request\n",
        )
        .to_string();
        assert!(
            t.contains("rejected `ipmitool chassis bootdev pxe options=efiboot`")
                && t.contains("Invalid data field")
                && t.contains("operator or administrator privilege"),
            "{t}"
        );
        let e = fail(Op::Off, "");
        assert!(
            e.to_string()
                .contains("ipmitool exited with exit status: 1"),
            "{e}"
        );
    }

    #[test]
    fn failures_are_classified_from_ipmitool_stderr() {
        let bad_pw = "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert_eq!(classify(bad_pw), Failure::Credentials);
        let bad_user = "> RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session";
        assert_eq!(classify(bad_user), Failure::Credentials);
        let down = "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert_eq!(classify(down), Failure::Unreachable);
        let refused =
            "Set Chassis Power Control to Cycle failed: Command not supported in present state";
        assert_eq!(classify(refused), Failure::Rejected);
        assert_eq!(
            useful(bad_pw),
            "> RAKP 2 HMAC is invalid; Error: Unable to establish IPMI v2 / RMCP+ session"
        );
    }
}
