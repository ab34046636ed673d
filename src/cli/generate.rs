//! `rollout generate …`: the man pages and shell completions the Debian package
//! ships (`scripts/package.sh`), made from this CLI's own definition so they
//! cannot drift from it. Hidden from `--help`: operators get the files installed.

use clap::CommandFactory;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum GenerateCmd {
    /// Write rollout.1 and one page per subcommand (rollout-serve.1, …) into DIR.
    Man { dir: PathBuf },
    /// Print the completion script for SHELL (bash, zsh, fish, …) to stdout.
    Completions { shell: clap_complete::Shell },
}

pub fn run(cmd: GenerateCmd) -> anyhow::Result<()> {
    let command = super::Cli::command();
    match cmd {
        GenerateCmd::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(command, &dir).map_err(|e| {
                anyhow::anyhow!("cannot write the man pages into {}: {e}", dir.display())
            })?;
        }
        GenerateCmd::Completions { shell } => clap_complete::generate(
            shell,
            &mut command.clone(),
            "rollout",
            &mut std::io::stdout(),
        ),
    }
    Ok(())
}
