//! `rollout initramfs …`

use super::{build, BuildOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum InitramfsCmd {
    /// Build {state_dir}/boot/initramfs.img and copy the kernel to {state_dir}/boot/vmlinuz.
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Kernel version (a directory in /lib/modules). Default: the newest one that has
    /// a /boot/vmlinuz-<version>.
    #[arg(long)]
    pub kernel_version: Option<String>,
    /// The static installer binary to use as /init. Default: /usr/lib/rollout/rollout-installer
    /// when installed from the Debian package, else
    /// <workspace>/target/x86_64-unknown-linux-musl/release/rollout-installer.
    #[arg(long)]
    pub installer: Option<PathBuf>,
    /// Output directory. Default: {state_dir}/boot.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub fn run(cmd: InitramfsCmd, state_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        InitramfsCmd::Build(args) => {
            let mut opts = BuildOptions::new(args.output.unwrap_or_else(|| state_dir.join("boot")));
            opts.kernel_version = args.kernel_version;
            opts.installer = args.installer;
            let started = std::time::Instant::now();
            let report = build(&opts)?;
            print!("{report}");
            println!("built in {:.1} s", started.elapsed().as_secs_f64());
            Ok(())
        }
    }
}
