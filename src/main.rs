//! The `rollout` command. Parsing only: the library does the work.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = rollout::cli::Cli::parse();
    rollout::cli::init_tracing(cli.log_format);
    rollout::cli::run(cli)
}
