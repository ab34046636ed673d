//! `rollout node power NAME status|on|off|cycle` and `rollout node reinstall
//! NAME… --now`: through the running server, which holds the BMC settings and
//! records who did what in each node's history.

use crate::api_client::Client;
use crate::power::PowerAction;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct PowerArgs {
    /// The node's hostname or MAC.
    pub node: String,
    /// status, on, off or cycle.
    #[arg(value_parser = ["status", "on", "off", "cycle"])]
    pub action: String,
}

fn path(node: &str, tail: &str) -> String {
    format!("/api/v1/nodes/{}/{tail}", super::nodes::enc(node))
}

pub fn run(args: PowerArgs, c: &Client) -> anyhow::Result<()> {
    let action = PowerAction::parse(&args.action)
        .ok_or_else(|| anyhow::anyhow!("unknown power action {:?}", args.action))?;
    let v: Value = if action == PowerAction::Status {
        c.get(&path(&args.node, "power"))?
    } else {
        c.post(&path(&args.node, "power"), Some(json!({"action": action})))?
    };
    match action {
        PowerAction::Status => println!(
            "{}: power {}",
            args.node,
            v["state"].as_str().unwrap_or("?")
        ),
        _ => println!("{}: power {} done", args.node, action.as_str()),
    }
    Ok(())
}

/// Marks each node, sets its next boot to PXE and cycles it; goes on past a
/// failure and fails at the end naming every node whose power step failed.
pub fn reinstall_now(nodes: &[String], c: &Client) -> anyhow::Result<()> {
    let mut failed = vec![];
    for node in nodes {
        match c.post::<Value>(&format!("{}?now=true", path(node, "reinstall")), None) {
            Ok(v) => {
                let steps: Vec<&str> = v["power"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!("{node}: marked for reinstall, power: {}", steps.join(" → "));
            }
            Err(e) => {
                eprintln!("{node}: {e}");
                failed.push(node.as_str());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "the power step failed for {} (marked for reinstall all the same: they install at their next power-on)",
            failed.join(", ")
        );
    }
    Ok(())
}
