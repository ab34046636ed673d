//! The `rollout` command line. `main.rs` parses and calls [`run`]; each area owns
//! its subcommands (images, initramfs, nodes, fleet).

pub mod generate;
pub mod nodes;
pub mod operators;
pub mod power;
pub mod watch;

use crate::api_client as client;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_CONFIG: &str = "/etc/rollout/rollout.toml";

#[derive(Parser)]
#[command(
    name = "rollout",
    version,
    about = "Network-boot provisioning: DHCP, TFTP and HTTP for racks of blank machines"
)]
pub struct Cli {
    /// The server's config file (also tells the CLI where the server and its state are).
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG, env = "ROLLOUT_CONFIG")]
    pub config: PathBuf,
    /// How log lines look: `text` for people, `json` (one object a line with
    /// level, target, fields and the spans, e.g. a DHCP packet's mac and xid)
    /// for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ROLLOUT_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs (to stdout, where the lab and the tests read them), filtered by
/// `ROLLOUT_LOG` (default: info, quieter for the HTTP and TFTP libraries).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLOUT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,tower_http=warn,async_tftp=warn")
    });
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => fmt
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        // `span`: the innermost span's fields; `spans`: every enclosing one.
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve DHCP, TFTP, HTTP and rsync to PXE clients (as root, on the provisioning network).
    Serve,
    /// Check the config file and print what would be served.
    CheckConfig,
    /// Build the installer's initramfs.
    #[command(subcommand)]
    Initramfs(crate::bootfiles::cli::InitramfsCmd),
    /// Golden images: build, import, enter, list, history, rollback, prune.
    #[command(subcommand)]
    Image(crate::images::cli::ImageCmd),
    /// Nodes known to the running server.
    #[command(subcommand)]
    Node(nodes::NodeCmd),
    /// Machines that PXE-booted without being declared.
    #[command(subcommand)]
    Discovered(nodes::DiscoveredCmd),
    /// Named operator credentials with a role (read, maintain, admin).
    #[command(subcommand)]
    Operator(operators::OperatorCmd),
    /// Live progress of every install, until interrupted.
    Watch(watch::WatchArgs),
    /// Run a command on nodes over SSH with the server's key.
    Exec(crate::fleet::ExecArgs),
    /// Bring nodes to their image's published serial (runs rollout-sync on each).
    Sync(crate::fleet::SyncArgs),
    /// Man pages and shell completions, for packagers.
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCmd),
}

async fn shutdown_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    cancel.cancel();
}

fn load(path: &std::path::Path) -> anyhow::Result<crate::config::Config> {
    use crate::config::ConfigError;
    match crate::config::Config::load(path) {
        // Only a file that cannot be read needs the hint where rollout looks;
        // an invalid one says which key and what to do by itself.
        Err(e @ ConfigError::Read { .. }) => Err(anyhow::Error::new(e)
            .context("rollout needs its config file; pass --config FILE or set ROLLOUT_CONFIG")),
        Err(e) => Err(anyhow::Error::new(e).context(format!("config file {}", path.display()))),
        Ok(c) => Ok(c),
    }
}

/// `exec` and `sync` run over SSH from here, with the server's key in state_dir,
/// not through the server. Before any SSH, each selected node's run is announced
/// to the server, which checks the credential's role (`maintain`) and records who
/// ran what in the node's history and its log; a refusal stops the command here.
fn announce_runs(
    config: &crate::config::Config,
    target: &crate::fleet::Target,
    action: &str,
    command: Option<String>,
) -> anyhow::Result<()> {
    let client = client::Client::from_config(config)?;
    // The role first: a read credential is refused even when no node would be
    // contacted (the per-node announcements below are what the server records).
    let me: serde_json::Value = client.get("/api/v1/whoami")?;
    if me["role"] == "read" {
        let name = me["name"].as_str().unwrap_or("anonymous");
        anyhow::bail!(
            "the server refused `rollout {action}`: needs role maintain; {name} has read"
        );
    }
    for n in crate::fleet::fetch_nodes(config, target)?.contact {
        client
            .post_no_content(
                &format!("/api/v1/nodes/{}/runs", n.mac),
                serde_json::json!({"action": action, "command": command}),
            )
            .with_context(|| format!("the server refused `rollout {action}` on {}", n.hostname))?;
    }
    Ok(())
}

/// `exec` and `sync` print their own summary; the exit code carries the verdict.
fn exit_on_failure(code: i32) {
    if code != 0 {
        std::process::exit(code);
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let config = crate::config::ValidConfig::try_from(load(&cli.config)?)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(shutdown_signal(cancel.clone()));
                crate::serve::serve(config, cancel).await
            })?;
        }
        Command::CheckConfig => {
            // The checks `serve` makes, with its messages: "valid" means serve starts.
            let config = crate::config::ValidConfig::try_from(load(&cli.config)?)?;
            println!("{} is valid", cli.config.display());
            println!("state directory: {}", config.state_dir.display());
            println!("HTTP base URL:   {}", config.http_base_url());
            println!(
                "DHCP:            {:?} on {}",
                config.dhcp.mode,
                config
                    .server
                    .interface
                    .as_deref()
                    .unwrap_or("(no interface)")
            );
            println!("declared nodes:  {}", config.nodes.len());
            for image in &config.images {
                println!(
                    "image {}: {} node-local paths besides the defaults, {} mounts during enter",
                    image.name,
                    image.excludes.len(),
                    image.mounts.len()
                );
            }
        }
        Command::Initramfs(cmd) => crate::bootfiles::cli::run(cmd, &load(&cli.config)?.state_dir)?,
        Command::Image(cmd) => crate::images::cli::run(cmd, &load(&cli.config)?)?,
        Command::Node(cmd) => {
            nodes::run_node(cmd, &client::Client::from_config(&load(&cli.config)?)?)?
        }
        Command::Discovered(cmd) => {
            nodes::run_discovered(cmd, &client::Client::from_config(&load(&cli.config)?)?)?
        }
        Command::Operator(cmd) => {
            operators::run(cmd, &client::Client::from_config(&load(&cli.config)?)?)?
        }
        Command::Watch(args) => {
            watch::watch(args, &client::Client::from_config(&load(&cli.config)?)?)?
        }
        Command::Exec(args) => {
            let config = load(&cli.config)?;
            announce_runs(&config, &args.target, "exec", Some(args.command.join(" ")))?;
            exit_on_failure(crate::fleet::run_exec(args, &config)?)
        }
        Command::Sync(args) => {
            let config = load(&cli.config)?;
            announce_runs(&config, &args.target, "sync", None)?;
            exit_on_failure(crate::fleet::run_sync(args, &config)?)
        }
        Command::Generate(cmd) => generate::run(cmd)?,
    }
    Ok(())
}
