//! The `rollout` command. Parsing only: the library does the work.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "rollout",
    version,
    about = "Network-boot provisioning: DHCP, TFTP and HTTP for racks of blank machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DHCP, TFTP and HTTP to PXE clients (run as root on the provisioning network).
    Serve {
        #[arg(long, short, default_value = "/etc/rollout/rollout.toml")]
        config: PathBuf,
    },
    /// Check a config file and print what would be served.
    CheckConfig {
        #[arg(long, short, default_value = "/etc/rollout/rollout.toml")]
        config: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLOUT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,tower_http=warn,async_tftp=warn")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn shutdown_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    cancel.cancel();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve { config } => {
            let config = rollout::config::Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(shutdown_signal(cancel.clone()));
                rollout::serve::serve(config, cancel).await
            })?;
        }
        Command::CheckConfig { config } => {
            let config = rollout::config::Config::load(&config)?;
            println!("{} is valid", config.state_dir.display());
            println!("HTTP base URL: {}", config.http_base_url());
            println!(
                "DHCP mode: {:?}, {} declared node(s)",
                config.dhcp.mode,
                config.nodes.len()
            );
        }
    }
    Ok(())
}
