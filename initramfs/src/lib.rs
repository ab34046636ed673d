//! rollout-installer: the /init of rollout's network-boot initramfs, and
//! `rollout-sync` on installed nodes (same binary, chosen by argv).
//!
//! Pure logic (command line, layout, swap header, renderings, modules.dep, rsync
//! progress, DHCP replies) lives in small modules with unit tests; `steps` strings
//! them together in the order of `wire::Step`.

pub mod block_image;
pub mod bootloader;
pub mod cmdline;
pub mod configure;
pub mod console;
pub mod contents;
pub mod crash;
pub mod dhcp_client;
pub mod disk;
pub mod disks;
pub mod efivars;
pub mod fileop;
pub mod format;
pub mod http_client;
pub mod hwinfo;
pub mod identity;
pub mod layout;
pub mod link;
pub mod lvm;
pub mod modules;
pub mod multicast;
pub mod net;
pub mod netconf;
pub mod nic;
pub mod nodetoml;
pub mod partition;
pub mod paths;
pub mod phone_home;
pub mod raid;
pub mod render;
pub mod report;
pub mod rsync;
pub mod slot;
pub mod steps;
pub mod swap;
pub mod sync;
pub mod sys;
pub mod tar_stream;
pub mod tools;
pub mod unpack;

#[cfg(test)]
mod testutil;

use std::path::Path;
use std::time::{Duration, Instant};

/// With `rollout.debug=1`, gives the operator a shell on the console before the
/// failure policy continues (exit the shell to go on). `args` is `None` when the
/// failure came before the command line was parsed.
fn debug_shell(args: Option<&cmdline::KernelArgs>) {
    let debug = args.map(|a| a.debug).unwrap_or_else(|| {
        let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        cmdline::split(&line).iter().any(|(k, v)| {
            k == rollout::wire::cmdline::DEBUG && matches!(v.as_deref(), None | Some("1"))
        })
    });
    if !debug {
        return;
    }
    if !Path::new(paths::SHELL).exists() {
        console::line(&format!(
            "debug: {} not in the initramfs, no shell",
            paths::SHELL
        ));
        return;
    }
    console::line(&format!(
        "debug: starting {}; exit it to continue",
        paths::SHELL
    ));
    if let Err(e) = std::process::Command::new(paths::SHELL).status() {
        console::line(&format!("debug: {}: {e}", paths::SHELL));
    }
}

/// Polls the plan every 10 s until the server hands out a new install id. A
/// node that got its plan with its one-time boot secret (no lease from rollout)
/// is refused from then on: it reboots, and its iPXE script waits for the
/// operator instead (and brings a new secret).
fn wait_for_new_plan(net: &steps::Network, old: &str) -> rollout::wire::InstallPlan {
    console::line("waiting for the server to schedule a new install (polling every 10 s)");
    loop {
        std::thread::sleep(Duration::from_secs(10));
        let request = rollout::wire::PlanRequest {
            boot_secret: net.boot_secret.clone(),
            hardware: None,
        };
        match steps::get_plan(&net.server, &net.mac, &request) {
            Ok(p) if p.install_id != old => {
                console::line(&format!("new install {}: restarting", p.install_id));
                return p;
            }
            Err(e @ steps::PlanError::Status { status: 403, .. }) => {
                console::line(&format!("{e}; the next boot asks the server again"));
                reboot_in(10)
            }
            _ => {}
        }
    }
}

fn reboot_in(secs: u64) -> ! {
    console::line(&format!("rebooting in {secs} s"));
    std::thread::sleep(Duration::from_secs(secs));
    sys::reboot()
}

/// A failure before there is a plan: report what can be reported, reboot.
fn give_up(run: &mut steps::Run, f: &steps::Failure, args: Option<&cmdline::KernelArgs>) -> ! {
    run.fail(f);
    debug_shell(args);
    let policy = rollout::wire::FailurePolicy::default();
    reboot_in(policy.reboot_after_secs.unwrap_or(60))
}

/// The whole life of PID 1: install, then reboot; on failure (or a panic in a
/// step) apply the plan's failure policy. Never returns.
pub fn init_main() -> ! {
    console::raw("rollout-installer: starting");
    crash::install_hook();
    let mut run = steps::Run::new(report::Reporter::new("", Instant::now()));
    let args = run
        .guarded(steps::boot)
        .unwrap_or_else(|f| give_up(&mut run, &f, None));
    let (net, mut plan) = run
        .guarded(|run| steps::bring_up(run, &args))
        .unwrap_or_else(|f| give_up(&mut run, &f, Some(&args)));
    loop {
        let failure =
            match run.guarded(|run| steps::install(run, &mut steps::Hardware, &net, &plan)) {
                Ok(()) => sys::reboot(),
                Err(f) => f,
            };
        run.fail(&failure);
        debug_shell(Some(&args));
        match plan.on_failure.reboot_after_secs {
            None => {
                plan = wait_for_new_plan(&net, &plan.install_id);
                run.set_plan(&plan);
            }
            Some(secs) => reboot_in(secs),
        }
    }
}
