//! From power-on to a plan: pseudo filesystems, modules, the NIC, DHCP.

use super::*;

pub(super) fn mount_pseudo(reporter: &mut Reporter) -> StepResult<KernelArgs> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut done = Vec::new();
    if !Path::new("/proc/self").exists() {
        sys::mount("proc", Path::new("/proc"), "proc", nodev, None)?;
        done.push("/proc");
    }
    for (what, at, fs, flags, data) in [
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ] {
        // The kernel may have auto-mounted devtmpfs already.
        if !sys::is_mounted(Path::new(at)) {
            sys::mount(what, Path::new(at), fs, flags, data)?;
            done.push(at);
        }
    }
    console::ensure_console_fds();
    let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let args = cmdline::parse(&line)?;
    reporter.set_server(&args.server);
    let msg = format!(
        "mounted {}; server {} mac {}",
        if done.is_empty() {
            "nothing (already mounted)".into()
        } else {
            done.join(" ")
        },
        args.server,
        args.mac
    );
    Ok((args, msg))
}

/// The interface with the boot MAC, up.
pub(super) fn pick_nic(args: &KernelArgs) -> StepResult<String> {
    let mac = &args.mac;
    let iface = net::wait_for_mac(mac, Duration::from_secs(30))?;
    let _ = net::set_up("lo");
    net::set_up(&iface)?;
    let carrier = net::wait_for_carrier(&iface, Duration::from_secs(10));
    let msg = format!(
        "{iface} ({mac}) up, carrier {}",
        if carrier { "yes" } else { "not yet" }
    );
    Ok((iface, msg))
}

pub(super) fn dhcp(args: &KernelArgs, iface: String) -> StepResult<Network> {
    // cmdline::parse accepted this MAC, so it converts; say so if it ever does not.
    let mac = cmdline::mac_bytes(&args.mac)
        .ok_or_else(|| StepError::Other(format!("boot MAC {} is not a MAC", args.mac)))?;
    // The node's bond and VLAN, if it has them: DHCP runs on the top device,
    // which carries the boot MAC.
    let iface = if args.link.is_plain() {
        iface
    } else {
        let (top, msg) = crate::link::bring_up(&args.link, &iface, &args.mac)?;
        console::line(&format!("dhcp: {msg}"));
        top
    };
    let lease = dhcp_client::obtain(&iface, mac, Duration::from_secs(120))?;
    net::configure(&iface, lease.addr, lease.netmask, lease.router)?;
    let gw = lease.router.map(|r| format!(" gw {r}")).unwrap_or_default();
    let msg = format!(
        "{iface} {}/{}{gw} from {}",
        lease.addr,
        lease.prefix_len(),
        lease.server_id
    );
    let net = Network {
        iface,
        addr: lease.addr,
        server: args.server.clone(),
        mac: args.mac.clone(),
        boot_secret: args.boot_secret.clone(),
    };
    Ok((net, msg))
}

pub(super) fn fetch_plan(net: &Network) -> StepResult<InstallPlan> {
    // The inventory goes with the request; the server keeps it once the
    // request is granted.
    let hardware = crate::hwinfo::collect(Path::new("/"));
    console::line(&format!(
        "fetch_plan: hardware: {}",
        crate::hwinfo::summary(&hardware)
    ));
    let request = rollout::wire::PlanRequest {
        boot_secret: net.boot_secret.clone(),
        hardware: Some(hardware.bounded()),
    };
    let plan = get_plan_retrying(
        &net.server,
        &net.mac,
        &request,
        Duration::from_secs(300),
        &mut |wait, e| {
            console::line(&format!(
                "fetch_plan: retrying in {} s: {e}",
                wait.as_secs()
            ));
            std::thread::sleep(wait);
        },
    )?;
    let msg = format!(
        "install {}: {} as {} image {} serial {}",
        plan.install_id, plan.mac, plan.hostname, plan.image.name, plan.image.serial
    );
    Ok((plan, msg))
}

pub(super) fn load_modules() -> StepResult<()> {
    let dir = modules::modules_dir(Path::new(paths::MODULES_DIR));
    let r = modules::load(&dir, paths::MODULES)?;
    if !r.missing.is_empty() {
        console::line(&format!(
            "load_modules: note: not in the initramfs, skipped: {}",
            r.missing.join(" ")
        ));
    }
    for n in &r.notes {
        console::line(&format!("load_modules: note: {n}"));
    }
    Ok((
        (),
        format!(
            "{} loaded, {} already loaded, {} built in, {} missing, {} failed ({})",
            r.loaded.len(),
            r.already.len(),
            r.builtin.len(),
            r.missing.len(),
            r.notes.len(),
            dir.display()
        ),
    ))
}
