//! The `rollout` command. Parsing only: the library does the work.

use clap::Parser;

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLOUT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,tower_http=warn,async_tftp=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = rollout::cli::Cli::parse();
    init_tracing();
    rollout::cli::run(cli)
}
