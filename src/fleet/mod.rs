//! `rollout exec` and `rollout sync`: run a command on installed nodes over SSH
//! with the server's key, a few at a time, one line of result per node.
//!
//! The node list comes from the running server's API; a node without a fixed
//! address is found through its DHCP lease in the server's SQLite store. Only
//! nodes whose installer reported their SSH host keys are contacted ([`select`]),
//! and ssh checks those keys strictly: a machine that merely PXE-booted, or
//! answers at a node's address, never sees a command.

pub mod ssh;

use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::config::Config;
use crate::store::Backend;

/// Where `rollout-sync` lives on installed nodes (the installer puts it there).
pub const NODE_SYNC_COMMAND: &str = "/var/lib/rollout/bin/rollout-sync sync";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("reading DHCP leases from {path}: {source}")]
    Leases {
        path: String,
        #[source]
        source: crate::store::StoreError,
    },
}

/// Which nodes: `--all`, or `--nodes` with shell-style globs on the hostname.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Hostname globs, comma-separated (`web*,db[12]`).
    #[arg(long, value_name = "PATTERN")]
    pub nodes: Option<String>,
    /// Every installed node (discovered, pending, installing and failed ones
    /// are never contacted).
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    #[command(flatten)]
    pub target: Target,
    /// Nodes worked on at the same time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Seconds per node before ssh is killed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The command: one argument is a shell snippet as typed; several are
    /// quoted one by one.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SyncArgs {
    #[command(flatten)]
    pub target: Target,
    /// Nodes synced at the same time (each pulls a full image diff).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Seconds per node before ssh is killed.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

/// The fields of `GET /api/v1/nodes` this module uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FleetNode {
    pub mac: String,
    pub hostname: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub serial: Option<u64>,
    /// The SSH host keys the node's installer reported (empty: unknown).
    #[serde(default)]
    pub host_keys: Vec<String>,
}

/// Who is contacted and who is refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub contact: Vec<FleetNode>,
    /// (hostname, reason) of selected nodes that are not contacted.
    pub refused: Vec<(String, String)>,
    /// Nodes `--all` left out because they are not installed.
    pub not_installed: usize,
}

/// Why a node without known host keys is not contacted, and what to do.
pub fn no_key_reason(n: &FleetNode) -> String {
    let state = n.state.as_deref().unwrap_or("unknown");
    let what = match state {
        "discovered" | "ignored" => format!("{state}: rollout never installed it, so its SSH host key is unknown; declare or approve it and let it install"),
        "installed" => format!("installed, but its installer reported no SSH host key (an install from before rollout recorded keys, or an image without ssh-keygen); reinstall it: `rollout node reinstall {}`", n.hostname),
        _ => format!("{state}, and no SSH host key is recorded for it: it is contacted once an install reports its keys (`rollout node reinstall {}` if it never finishes)", n.hostname),
    };
    format!("not contacted: {what}")
}

/// The pure choice: `--all` is every installed node; `--nodes` is the named
/// nodes. Either way only a node with recorded host keys is contacted; a
/// selected one without them is refused with the reason, except that `--all`
/// leaves nodes that are not installed out silently (counted).
pub fn select(all: &[FleetNode], target: &Target) -> Selection {
    let mut sel = Selection::default();
    for n in all.iter().filter(|n| matches(target, &n.hostname)) {
        let installed = n.state.as_deref() == Some("installed");
        if target.all && !installed {
            sel.not_installed += 1;
        } else if n.host_keys.is_empty() {
            sel.refused.push((n.hostname.clone(), no_key_reason(n)));
        } else {
            sel.contact.push(n.clone());
        }
    }
    sel.contact.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    sel.refused.sort();
    sel
}

/// Shell-style glob: `*`, `?` and `[abc]`/`[a-z]`/`[!a]` classes.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        let mut i = 1;
        let negate = matches!(p.get(1), Some('!') | Some('^'));
        if negate {
            i += 1;
        }
        let mut hit = false;
        let mut first = true;
        while i < p.len() && (p[i] != ']' || first) {
            first = false;
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') if !n.is_empty() => match class(p, n[0]) {
                Some((true, used)) => go(&p[used..], &n[1..]),
                Some((false, _)) => false,
                // No closing bracket: a literal `[`.
                None => n[0] == '[' && go(&p[1..], &n[1..]),
            },
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

pub fn matches(target: &Target, hostname: &str) -> bool {
    match &target.nodes {
        _ if target.all => true,
        Some(pats) => pats
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .any(|p| glob(p, hostname)),
        None => false,
    }
}

/// The address of the newest bound lease for `mac` in the lease store;
/// `None` without a database or a lease.
pub fn lease_ip(leases: &Backend, mac: &str) -> Result<Option<String>, FleetError> {
    // Not a MAC: no lease can match it.
    let Some(mac) = crate::mac::normalize(mac) else {
        return Ok(None);
    };
    leases
        .bound_ip_of(&mac)
        .map_err(|source| FleetError::Leases {
            path: leases.describe(),
            source,
        })
}

/// The node's address: the inventory's `ip`, else its DHCP lease.
pub fn address(node: &FleetNode, leases: &Backend) -> Result<String, String> {
    if let Some(ip) = node.ip.as_deref().filter(|s| !s.is_empty()) {
        return Ok(ip.to_string());
    }
    match lease_ip(leases, &node.mac) {
        Ok(Some(ip)) => Ok(ip),
        Ok(None) => Err(format!(
            "no address (no ip in the inventory, no bound DHCP lease for {})",
            node.mac
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// One node's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeResult {
    pub hostname: String,
    pub outcome: ssh::Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub ok: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub refused: usize,
}

impl Summary {
    pub fn add(&mut self, o: &ssh::Outcome) {
        match o {
            ssh::Outcome::Exited { code: 0, .. } => self.ok += 1,
            ssh::Outcome::Exited { .. } | ssh::Outcome::TimedOut { .. } => self.failed += 1,
            ssh::Outcome::Unreachable(_) => self.unreachable += 1,
            ssh::Outcome::Refused(_) => self.refused += 1,
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.failed + self.unreachable + self.refused == 0 {
            0
        } else {
            1
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ok, {} failed, {} unreachable",
            self.ok, self.failed, self.unreachable
        )?;
        if self.refused > 0 {
            write!(f, ", {} refused", self.refused)?;
        }
        Ok(())
    }
}

/// The first `n` non-empty lines, joined with ` | ` and cut at 200 characters.
pub fn first_lines(text: &str, n: usize) -> String {
    let joined = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join(" | ");
    if joined.chars().count() > 200 {
        joined.chars().take(199).collect::<String>() + "…"
    } else {
        joined
    }
}

/// `hostname  exit=0  first lines`, `hostname  UNREACHABLE: reason` or
/// `hostname  TIMEOUT after S s  first lines`; hostnames padded to `width`.
pub fn exec_line(r: &NodeResult, width: usize) -> String {
    let h = format!("{:<width$}", r.hostname);
    let line = match &r.outcome {
        ssh::Outcome::Exited {
            code,
            stdout,
            stderr,
        } => format!(
            "{h}  exit={code}  {}",
            first_lines(&format!("{stdout}\n{stderr}"), 3)
        ),
        ssh::Outcome::Unreachable(why) => format!("{h}  UNREACHABLE: {why}"),
        ssh::Outcome::Refused(why) => format!("{h}  REFUSED: {why}"),
        ssh::Outcome::TimedOut { secs, stdout } => {
            format!("{h}  TIMEOUT after {secs} s  {}", first_lines(stdout, 3))
        }
    };
    line.trim_end().to_string()
}

/// What `rollout-sync sync` said on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    pub serial: u64,
    /// The summary line as printed by the node.
    pub line: String,
    pub reboot: bool,
}

/// Finds `up to date (serial N)` or `updated A → B, … reboot needed: yes|no`.
pub fn parse_sync_output(stdout: &str) -> Option<SyncStatus> {
    stdout.lines().rev().map(str::trim).find_map(|l| {
        if let Some(rest) = l.strip_prefix("up to date (serial ") {
            let serial = rest.strip_suffix(')')?.parse().ok()?;
            return Some(SyncStatus {
                serial,
                line: "up to date".into(),
                reboot: false,
            });
        }
        let rest = l.strip_prefix("updated ")?;
        let (_, after) = rest.split_once(" → ")?;
        let serial = after.split(',').next()?.trim().parse().ok()?;
        Some(SyncStatus {
            serial,
            line: l.to_string(),
            reboot: l.ends_with("reboot needed: yes"),
        })
    })
}

/// `hostname  exit=0  serial N (what the node said)`; other outcomes as [`exec_line`].
pub fn sync_line(r: &NodeResult, width: usize) -> String {
    if let ssh::Outcome::Exited {
        code: 0, stdout, ..
    } = &r.outcome
    {
        let h = format!("{:<width$}", r.hostname);
        return match parse_sync_output(stdout) {
            Some(s) => format!("{h}  exit=0  serial {} ({})", s.serial, s.line),
            None => format!(
                "{h}  exit=0  no serial in the output: {}",
                first_lines(stdout, 3)
            ),
        };
    }
    exec_line(r, width)
}

/// Runs `job` on every item with `parallel` worker threads; `done` sees each
/// result as it arrives (in completion order).
pub fn run_parallel<T, R>(
    items: Vec<T>,
    parallel: usize,
    job: impl Fn(T) -> R + Send + Sync + 'static,
    mut done: impl FnMut(R),
) where
    T: Send + 'static,
    R: Send + 'static,
{
    let queue = Arc::new(Mutex::new(items.into_iter()));
    let job = Arc::new(job);
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (queue, job, tx) = (queue.clone(), job.clone(), tx.clone());
            std::thread::spawn(move || loop {
                let next = queue.lock().expect("queue lock").next();
                let Some(item) = next else { break };
                if tx.send(job(item)).is_err() {
                    break;
                }
            })
        })
        .collect();
    drop(tx);
    for r in rx {
        done(r);
    }
    for w in workers {
        let _ = w.join();
    }
}

/// The selected nodes from the server's API (see [`select`]).
pub fn fetch_nodes(config: &Config, target: &Target) -> anyhow::Result<Selection> {
    let client = crate::api_client::Client::from_config(config)?;
    let all: Vec<FleetNode> = client
        .get("/api/v1/nodes")
        .context("listing nodes from the running server")?;
    let sel = select(&all, target);
    if sel.contact.is_empty() && sel.refused.is_empty() {
        let known: Vec<&str> = all.iter().map(|n| n.hostname.as_str()).collect();
        anyhow::bail!(
            "no {}node matches {}; the server knows: {}",
            if target.all { "installed " } else { "" },
            target.nodes.as_deref().unwrap_or("--all"),
            if known.is_empty() {
                "no nodes".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    Ok(sel)
}

fn ssh_settings(config: &Config) -> anyhow::Result<ssh::SshSettings> {
    let s = ssh::SshSettings::for_state_dir(&config.state_dir);
    if !s.key.exists() {
        anyhow::bail!(
            "no server SSH key at {}: `rollout serve` creates it at start (needs ssh-keygen), and installed nodes trust it",
            s.key.display()
        );
    }
    Ok(s)
}

/// Runs `remote` on every selected node and writes one line per node, then the
/// summary. Returns the summary and the per-node results.
#[allow(clippy::too_many_arguments)]
fn fan_out(
    config: &Config,
    settings: ssh::SshSettings,
    selection: Selection,
    remote: String,
    parallel: u32,
    timeout: u64,
    line: fn(&NodeResult, usize) -> String,
    out: &mut dyn Write,
) -> anyhow::Result<(Summary, Vec<NodeResult>)> {
    let Selection {
        contact: nodes,
        refused,
        not_installed,
    } = selection;
    let width = nodes
        .iter()
        .map(|n| n.hostname.len())
        .chain(refused.iter().map(|(h, _)| h.len()))
        .max()
        .unwrap_or(0);
    let shared = config
        .store
        .as_ref()
        .map(crate::config::PgTarget::try_from)
        .transpose()?;
    let leases = Backend::new(&config.state_dir, shared.as_ref());
    let timeout = Duration::from_secs(timeout);
    let settings = Arc::new(settings);
    let mut summary = Summary::default();
    let mut results = Vec::new();
    let mut write_err = None;
    if not_installed > 0 {
        writeln!(
            out,
            "({not_installed} node(s) not installed, not contacted: `rollout node list` shows them)"
        )?;
    }
    for (hostname, why) in refused {
        let r = NodeResult {
            hostname,
            outcome: ssh::Outcome::Refused(why),
        };
        summary.add(&r.outcome);
        writeln!(out, "{}", line(&r, width))?;
        results.push(r);
    }
    run_parallel(
        nodes,
        parallel as usize,
        move |n: FleetNode| {
            let outcome = match address(&n, &leases) {
                Ok(addr) => ssh::run(&settings, &n.hostname, &addr, &remote, timeout),
                Err(why) => ssh::Outcome::Unreachable(why),
            };
            NodeResult {
                hostname: n.hostname,
                outcome,
            }
        },
        |r| {
            summary.add(&r.outcome);
            if let Err(e) = writeln!(out, "{}", line(&r, width)).and_then(|_| out.flush()) {
                write_err.get_or_insert(e);
            }
            results.push(r);
        },
    );
    if let Some(e) = write_err {
        return Err(e).context("writing the results");
    }
    writeln!(out, "{summary}")?;
    Ok((summary, results))
}

/// `rollout exec`: the exit code is 0 only when every node ran the command with 0.
pub fn run_exec_to(args: ExecArgs, config: &Config, out: &mut dyn Write) -> anyhow::Result<i32> {
    let settings = ssh_settings(config)?;
    let nodes = fetch_nodes(config, &args.target)?;
    let remote = ssh::remote_command(&args.command);
    let (summary, _) = fan_out(
        config,
        settings,
        nodes,
        remote,
        args.parallel,
        args.timeout,
        exec_line,
        out,
    )?;
    Ok(summary.exit_code())
}

pub fn run_exec(args: ExecArgs, config: &Config) -> anyhow::Result<i32> {
    run_exec_to(args, config, &mut std::io::stdout().lock())
}

/// `rollout sync`: runs `rollout-sync sync` on each node and reports its serial.
pub fn run_sync_to(args: SyncArgs, config: &Config, out: &mut dyn Write) -> anyhow::Result<i32> {
    let settings = ssh_settings(config)?;
    let nodes = fetch_nodes(config, &args.target)?;
    let (summary, results) = fan_out(
        config,
        settings,
        nodes,
        NODE_SYNC_COMMAND.to_string(),
        args.parallel,
        args.timeout,
        sync_line,
        out,
    )?;
    let mut reboot: Vec<&str> = results
        .iter()
        .filter(|r| match &r.outcome {
            ssh::Outcome::Exited {
                code: 0, stdout, ..
            } => parse_sync_output(stdout).is_some_and(|s| s.reboot),
            _ => false,
        })
        .map(|r| r.hostname.as_str())
        .collect();
    reboot.sort_unstable();
    if !reboot.is_empty() {
        writeln!(out, "reboot needed on: {}", reboot.join(", "))?;
    }
    Ok(summary.exit_code())
}

pub fn run_sync(args: SyncArgs, config: &Config) -> anyhow::Result<i32> {
    run_sync_to(args, config, &mut std::io::stdout().lock())
}

#[cfg(test)]
mod tests;
