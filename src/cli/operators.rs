//! `rollout operator add|list|revoke`: named credentials with a role, through
//! the running server's API (which needs the admin role for these).

use crate::api_client::Client;
use serde_json::{json, Value};

#[derive(clap::Subcommand)]
pub enum OperatorCmd {
    /// Issue a credential; its token is printed once and stored only as a hash.
    Add {
        name: String,
        /// read (see everything), maintain (also reinstall), admin (also nodes and operators).
        #[arg(long, value_parser = ["read", "maintain", "admin"])]
        role: String,
    },
    /// Every operator with its role (never the tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a credential: its next request is refused, its dashboard sessions end.
    Revoke { name: String },
    /// The name and role of the credential this command line uses.
    Whoami,
}

pub fn run(cmd: OperatorCmd, client: &Client) -> anyhow::Result<()> {
    match cmd {
        OperatorCmd::Add { name, role } => {
            let v: Value = client.post(
                "/api/v1/operators",
                Some(json!({"name": name, "role": role})),
            )?;
            let token = v["token"].as_str().unwrap_or_default();
            eprintln!(
                "operator {name} ({role}) added. Its token is shown only now; give it to them, they use it as ROLLOUT_TOKEN or to sign in to the dashboard:"
            );
            println!("{token}");
        }
        OperatorCmd::List { json } => {
            let v: Vec<Value> = client.get("/api/v1/operators")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<24} {:<9} CREATED (UTC)", "NAME", "ROLE");
                for o in &v {
                    println!(
                        "{:<24} {:<9} {}",
                        o["name"].as_str().unwrap_or(""),
                        o["role"].as_str().unwrap_or(""),
                        crate::clock::rfc3339(o["created"].as_u64().unwrap_or(0))
                    );
                }
            }
        }
        OperatorCmd::Revoke { name } => {
            client.delete(&format!("/api/v1/operators/{name}"))?;
            println!("operator {name} revoked");
        }
        OperatorCmd::Whoami => {
            let v: Value = client.get("/api/v1/whoami")?;
            println!(
                "{} ({})",
                v["name"].as_str().unwrap_or("anonymous"),
                v["role"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
