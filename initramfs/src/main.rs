//! Entry point: `/init` in the initramfs (PID 1) runs the installer; on an
//! installed node the same binary is `rollout-sync` with subcommands.

use std::process::ExitCode;

use rollout_installer::{console, phone_home, sync, sys};

const USAGE: &str = "usage: rollout-sync phone-home   (report this boot to the rollout server)\n\
                     \x20      rollout-sync sync         (update this node to the published image serial)\n\
                     As /init (PID 1) of the rollout initramfs this binary installs the node.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("phone-home") => match phone_home::run(std::path::Path::new("/"), 30) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rollout-sync: {:#}", anyhow::Error::new(e));
                ExitCode::FAILURE
            }
        },
        Some("sync") => {
            // `--root DIR` (undocumented) syncs into DIR instead of /, for tests.
            let root = match args.get(2).map(String::as_str) {
                None => "/".to_string(),
                Some("--root") if args.len() == 4 => args[3].clone(),
                Some(_) => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            };
            match sync::run(std::path::Path::new(&root), |l| {
                println!("rollout-sync: {l}")
            }) {
                Ok(report) => {
                    if let sync::Report::Updated { notes, .. } = &report {
                        for n in notes {
                            println!("rollout-sync: {n}");
                        }
                    }
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // Every SyncError message already names its cause.
                    eprintln!("rollout-sync: sync failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("--version") => {
            println!("rollout-installer {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ if sys::is_pid1() => {
            // A panic in a step is reported and handled as that step's failure
            // inside init_main; this catch is the last resort for a panic in the
            // failure path itself. PID 1 must never exit or unwind out: the
            // kernel would panic. (init_main installs the panic hook.)
            let _ = std::panic::catch_unwind(|| {
                rollout_installer::init_main();
            });
            console::line("the installer crashed; rebooting in 60 s");
            std::thread::sleep(std::time::Duration::from_secs(60));
            sys::reboot()
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
