//! From power-on to a plan: pseudo filesystems, modules, the NIC, DHCP.

use super::*;

impl Installer {
    pub(super) fn mount_pseudo(&mut self) -> Result<((), String), StepError> {
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
        self.reporter.set_server(&args.server);
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
        self.args = Some(args);
        Ok(((), msg))
    }

    pub(super) fn pick_nic(&mut self) -> Result<((), String), StepError> {
        let mac = self.args().mac.clone();
        let iface = net::wait_for_mac(&mac, Duration::from_secs(30))?;
        let _ = net::set_up("lo");
        net::set_up(&iface)?;
        let carrier = net::wait_for_carrier(&iface, Duration::from_secs(10));
        let msg = format!(
            "{iface} ({mac}) up, carrier {}",
            if carrier { "yes" } else { "not yet" }
        );
        self.iface = Some(iface);
        Ok(((), msg))
    }

    pub(super) fn dhcp(&mut self) -> Result<((), String), StepError> {
        let iface = self.iface.clone().expect("pick_nic ran");
        let mac = cmdline::mac_bytes(&self.args().mac).expect("validated MAC");
        let lease = dhcp::obtain(&iface, mac, Duration::from_secs(120))?;
        net::configure(&iface, lease.addr, lease.netmask, lease.router)?;
        let gw = lease.router.map(|r| format!(" gw {r}")).unwrap_or_default();
        Ok((
            (),
            format!(
                "{iface} {}/{}{gw} from {}",
                lease.addr,
                lease.prefix_len(),
                lease.server_id
            ),
        ))
    }

    pub(super) fn fetch_plan(&mut self) -> Result<((), String), StepError> {
        let (server, mac) = (self.args().server.clone(), self.args().mac.clone());
        let plan = get_plan_retrying(&server, &mac, Duration::from_secs(300), &mut |wait, e| {
            console::line(&format!(
                "fetch_plan: retrying in {} s: {e}",
                wait.as_secs()
            ));
            std::thread::sleep(wait);
        })?;
        self.set_plan(plan);
        let p = self.plan();
        Ok((
            (),
            format!(
                "install {}: {} as {} image {} serial {}",
                p.install_id, p.mac, p.hostname, p.image.name, p.image.serial
            ),
        ))
    }
}

pub(super) fn load_modules() -> Result<((), String), StepError> {
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
