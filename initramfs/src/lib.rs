//! rollout-installer: the /init of rollout's network-boot initramfs, and
//! `rollout-sync` on installed nodes (same binary, chosen by argv).
//!
//! Pure logic (command line, layout, swap header, renderings, modules.dep, rsync
//! progress, DHCP replies) lives in small modules with unit tests; `steps` strings
//! them together in the order of `wire::Step`.

pub mod bootloader;
pub mod cmdline;
pub mod configure;
pub mod console;
pub mod dhcp;
pub mod disk;
pub mod efivars;
pub mod fileop;
pub mod format;
pub mod http;
pub mod layout;
pub mod modules;
pub mod net;
pub mod nodetoml;
pub mod partition;
pub mod paths;
pub mod phone_home;
pub mod render;
pub mod report;
pub mod rsync;
pub mod steps;
pub mod swap;
pub mod sync;
pub mod sys;

#[cfg(test)]
mod testutil;

use std::path::Path;
use std::time::{Duration, Instant};

/// With `rollout.debug=1`, gives the operator a shell on the console before the
/// failure policy continues (exit the shell to go on).
fn debug_shell(inst: &steps::Installer) {
    let debug = inst.args.as_ref().map(|a| a.debug).unwrap_or_else(|| {
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

/// Polls the plan every 10 s until the server hands out a new install id.
fn wait_for_new_plan(inst: &steps::Installer) -> rollout::wire::InstallPlan {
    let args = inst
        .args
        .as_ref()
        .expect("network is up, so args were parsed");
    let old = inst.plan.as_ref().map(|p| p.install_id.clone());
    console::line("waiting for the server to schedule a new install (polling every 10 s)");
    loop {
        std::thread::sleep(Duration::from_secs(10));
        if let Ok(p) = steps::get_plan(&args.server, &args.mac) {
            if Some(&p.install_id) != old.as_ref() {
                console::line(&format!("new install {}: restarting", p.install_id));
                return p;
            }
        }
    }
}

/// The whole life of PID 1: install, then reboot; on failure apply the plan's
/// failure policy. Never returns.
pub fn init_main() -> ! {
    console::raw("rollout-installer: starting");
    let mut inst = steps::Installer::new(Instant::now());
    let mut outcome = inst.bring_up().and_then(|_| inst.install());
    loop {
        let failure = match outcome {
            Ok(()) => sys::reboot(),
            Err(f) => f,
        };
        let policy = inst.fail(&failure);
        debug_shell(&inst);
        match policy.reboot_after_secs {
            None if inst.has_network() => {
                let plan = wait_for_new_plan(&inst);
                inst.reset_install();
                inst.set_plan(plan);
                outcome = inst.install();
            }
            secs => {
                let secs = secs.unwrap_or(60);
                console::line(&format!("rebooting in {secs} s"));
                std::thread::sleep(Duration::from_secs(secs));
                sys::reboot();
            }
        }
    }
}
