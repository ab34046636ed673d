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

/// The interface with the boot MAC (the NIC the firmware booted, whichever of
/// the node's NICs it is), up and, within a bounded wait, with link. While it
/// has not appeared, devices are rescanned for drivers.
pub(super) fn pick_nic(args: &KernelArgs) -> StepResult<String> {
    let mac = &args.mac;
    let appear = Duration::from_secs(30);
    let start = Instant::now();
    let (chosen, others) = loop {
        let nics = nic::list(Path::new("/sys/class/net"));
        if let Some(n) = nic::choose(&nics, mac) {
            let others: Vec<String> = nics
                .iter()
                .filter(|o| o.name != n.name && o.driver.is_some())
                .map(|o| format!("{} {}", o.name, o.mac))
                .collect();
            break (n.clone(), others);
        }
        if start.elapsed() >= appear {
            return Err(nic::no_boot_nic(&nics, mac, appear.as_secs()).into());
        }
        rescan_devices("pick_nic");
        std::thread::sleep(Duration::from_millis(250));
    };
    let iface = chosen.name;
    let _ = net::set_up("lo");
    net::set_up(&iface)?;
    // Autonegotiation takes seconds on real switches; DHCP tries regardless
    // after this, and fails naming the interface if the link never comes.
    let link_wait = Duration::from_secs(20);
    let carrier = net::wait_for_carrier(&iface, link_wait);
    let msg = format!(
        "{iface} ({mac}, driver {}) up, {}{}",
        chosen.driver.as_deref().unwrap_or("none"),
        if carrier {
            "link up".to_string()
        } else {
            format!(
                "no link after {} s, trying DHCP anyway",
                link_wait.as_secs()
            )
        },
        if others.is_empty() {
            String::new()
        } else {
            format!("; other NICs: {}", others.join(", "))
        }
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
        // Loaded only now: the bonding module makes a bond0 of its own on
        // load, which a node without a bond must not see.
        let mut wanted = Vec::new();
        if args.link.bond.is_some() {
            wanted.push("bonding");
        }
        if args.link.vlan.is_some() {
            wanted.push("8021q");
        }
        let report = crate::modules::load_by_name(&wanted);
        for note in report.notes.iter().chain(&report.missing) {
            console::line(&format!("dhcp: module for the link: {note}"));
        }
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

/// The must-have modules by name, then rounds of modalias passes until the
/// devices stop asking for new drivers (a loaded controller brings up devices of
/// its own: virtio_pci the virtio NIC, an HBA its disks) or 15 s pass.
pub(super) fn load_modules() -> StepResult<()> {
    let dir = modules::modules_dir(Path::new(paths::MODULES_DIR));
    let mut r = modules::start(&dir, paths::MODULES)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut quiet_since = Instant::now();
    let mut claimed = 0;
    loop {
        let (loads, pass) = modules::rescan(Path::new(paths::SYS_BUS));
        for l in &loads {
            console::line(&format!("load_modules: {}", l.describe()));
        }
        if !loads.is_empty() {
            quiet_since = Instant::now();
        }
        claimed += loads.len();
        r.merge(pass);
        if quiet_since.elapsed() >= Duration::from_millis(1500) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if !r.missing.is_empty() {
        console::line(&format!(
            "load_modules: note: not in the initramfs, skipped: {}",
            r.missing.join(" ")
        ));
    }
    for n in &r.notes {
        console::line(&format!("load_modules: note: {n}"));
    }
    for b in &r.blacklisted {
        console::line(&format!("load_modules: {b}"));
    }
    for m in &r.with_params {
        console::line(&format!(
            "load_modules: {m} (parameters from the kernel command line)"
        ));
    }
    Ok((
        (),
        format!(
            "{} loaded ({claimed} for devices by modalias), {} already loaded, {} built in, {} missing, {} failed ({})",
            r.loaded.len(),
            r.already.len(),
            r.builtin.len(),
            r.missing.len(),
            r.notes.len(),
            dir.display()
        ),
    ))
}

/// A modalias pass while a later step waits for a device, its lines on the console.
pub(super) fn rescan_devices(step: &str) {
    let (loads, pass) = modules::rescan(Path::new(paths::SYS_BUS));
    for l in &loads {
        console::line(&format!("{step}: {}", l.describe()));
    }
    for n in &pass.notes {
        console::line(&format!("{step}: note: {n}"));
    }
}
