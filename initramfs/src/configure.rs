//! Node-specific files in the freshly copied root: identity, network, fstab,
//! keys, the plan's files and the phone-home hooks.

use crate::fileop::{io, FileError};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use rollout::wire::{InstallPlan, NetworkPlan};

use crate::identity::Identity;
use crate::render::{self, RenderError};
use crate::{net, netconf};
use crate::{paths, sys};

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Io(#[from] FileError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("plan.files entry {0:?} must be an absolute path without `..`")]
    BadPath(String),
}

/// `target` + an absolute in-image path, refusing `..` so plan files cannot escape.
pub fn in_target(target: &Path, path: &str) -> Result<PathBuf, ConfigureError> {
    let rel = Path::new(path);
    if !rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ConfigureError::BadPath(path.to_string()));
    }
    Ok(target.join(path.trim_start_matches('/')))
}

/// Whether the image has `path`, without following absolute symlinks out of it.
fn has(target: &Path, path: &str) -> bool {
    target
        .join(path.trim_start_matches('/'))
        .symlink_metadata()
        .is_ok()
}

pub fn write_file(
    target: &Path,
    path: &str,
    contents: &[u8],
    mode: u32,
) -> Result<(), ConfigureError> {
    let p = in_target(target, path)?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    // A symlink in the image (e.g. resolv.conf → stub) is replaced, not followed.
    if p.symlink_metadata()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        std::fs::remove_file(&p).map_err(io("remove symlink", &p))?;
    }
    std::fs::write(&p, contents).map_err(io("write", &p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", &p)(e).into())
}

fn link(target: &Path, link_path: &str, points_to: &str) -> Result<(), ConfigureError> {
    let p = in_target(target, link_path)?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    let _ = std::fs::remove_file(&p);
    symlink(points_to, &p).map_err(|e| io("symlink", &p)(e).into())
}

/// First of `candidates` present in the image.
fn first_present<'a>(target: &Path, candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().copied().find(|c| has(target, c))
}

/// Files this module writes that are not already in `wire::DEFAULT_EXCLUDES`
/// (rsync filter syntax, anchored at the root). `rollout-sync` keeps them out of
/// an update, so `--delete` cannot remove the node's network, keys or hooks.
pub const INSTALLER_WRITTEN: &[&str] = &[
    "/var/lib/dbus/machine-id",
    // This node's own arrays (a layout with RAID1).
    "/etc/mdadm/mdadm.conf",
    "/etc/resolv.conf",
    "/root/.ssh/authorized_keys",
    "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    "/etc/systemd/system/dbus-org.freedesktop.network1.service",
    "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
    "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
    paths::NODE_SYNC_BINARY,
    paths::NODE_PHONE_HOME_SCRIPT,
    paths::NODE_SYNC_LOOP_SCRIPT,
    "/etc/systemd/system/rollout-phone-home.service",
    "/etc/systemd/system/multi-user.target.wants/rollout-phone-home.service",
    "/etc/init.d/rollout-phone-home",
    "/etc/rc[2-5].d/S99rollout-phone-home",
    "/etc/systemd/system/rollout-sync.service",
    "/etc/systemd/system/rollout-sync.timer",
    "/etc/systemd/system/timers.target.wants/rollout-sync.timer",
];

/// Where an image that boots with systemd has it.
const SYSTEMD: &[&str] = &["/usr/lib/systemd/systemd", "/lib/systemd/systemd"];

/// Facts the configure step needs beyond the plan.
pub struct NodeFacts<'a> {
    pub plan: &'a InstallPlan,
    /// The installed fstab: every filesystem, swap area and network or tmpfs mount.
    pub fstab: Vec<render::FstabEntry>,
    /// `/etc/mdadm/mdadm.conf` when the layout has md arrays.
    pub mdadm_conf: Option<String>,
    /// The boot NIC's kernel name in the installer, for ifupdown configs.
    pub iface: String,
    /// Every NIC the installer saw, (kernel name, MAC): ifupdown names a bond's
    /// members by kernel name.
    pub nics: Vec<(String, String)>,
    /// The installer binary to copy onto the node as rollout-sync.
    pub installer_exe: PathBuf,
    /// Host keys and machine-id carried over from this node's previous install
    /// (`crate::identity`); `None`: fresh ones.
    pub identity: Option<&'a Identity>,
}

/// Creates the mount point of every network and tmpfs mount of the layout
/// (the copy put nothing under them). One that the image has as a symlink
/// (`/var/lock` → `/run/lock`) is left as it is: mount follows it.
fn mount_points(target: &Path, plan: &InstallPlan) -> Result<Vec<String>, ConfigureError> {
    let mut made = Vec::new();
    for m in &plan.layout.mounts {
        let dir = in_target(target, &m.mount)?;
        if dir.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        made.push(m.mount.clone());
    }
    Ok(if made.is_empty() {
        vec![]
    } else {
        vec![format!("mount points created: {}", made.join(" "))]
    })
}

/// Writes everything and returns notes worth printing (which mechanisms were used).
pub fn apply(target: &Path, f: &NodeFacts) -> Result<Vec<String>, ConfigureError> {
    let plan = f.plan;
    let mut notes = Vec::new();
    write_file(
        target,
        "/etc/hostname",
        render::hostname(&plan.hostname).as_bytes(),
        0o644,
    )?;
    write_file(
        target,
        "/etc/hosts",
        render::hosts(&plan.hostname).as_bytes(),
        0o644,
    )?;
    write_file(
        target,
        "/etc/fstab",
        render::fstab(&f.fstab).as_bytes(),
        0o644,
    )?;
    if let Some(conf) = &f.mdadm_conf {
        write_file(target, "/etc/mdadm/mdadm.conf", conf.as_bytes(), 0o644)?;
    }
    notes.extend(mount_points(target, plan)?);
    notes.push(network(target, f)?);
    let kept_id = f.identity.and_then(|i| i.machine_id.as_deref());
    let machine_id = match kept_id {
        Some(id) => format!("{id}\n"),
        None => format!("{}\n", uuid::Uuid::new_v4().simple()),
    };
    write_file(target, "/etc/machine-id", machine_id.as_bytes(), 0o444)?;
    let dbus_id = target.join("var/lib/dbus/machine-id");
    if dbus_id
        .symlink_metadata()
        .map(|m| m.is_file())
        .unwrap_or(false)
    {
        write_file(
            target,
            "/var/lib/dbus/machine-id",
            machine_id.as_bytes(),
            0o444,
        )?;
    }
    notes.push(ssh_host_keys(target, f.identity)?);
    authorized_keys(target, &plan.ssh_authorized_keys)?;
    write_file(
        target,
        paths::NODE_SERIAL,
        format!("{}\n", plan.image.serial).as_bytes(),
        0o644,
    )?;
    write_file(
        target,
        paths::NODE_CONFIG,
        render::node_toml(plan).as_bytes(),
        0o644,
    )?;
    // The node's credential: root only, it is the node's identity to the server.
    write_file(
        target,
        paths::NODE_SECRET,
        format!("{}\n", plan.node.secret).as_bytes(),
        0o600,
    )?;
    write_file(
        target,
        paths::NODE_RSYNC_PASSWORD,
        format!("{}\n", plan.node.rsync.password).as_bytes(),
        0o600,
    )?;
    for file in &plan.files {
        write_file(target, &file.path, file.contents.as_bytes(), file.mode)?;
    }
    notes.push(phone_home(target, &f.installer_exe)?);
    notes.push(sync_timer(target, plan.sync_interval_secs)?);
    Ok(notes)
}

/// The node's own periodic `rollout-sync` (the pull side of updates), when the
/// server asks for one and the image runs systemd.
fn sync_timer(target: &Path, interval: u64) -> Result<String, ConfigureError> {
    if interval == 0 {
        return Ok("periodic sync: off (the node updates on `rollout sync`)".into());
    }
    if first_present(target, SYSTEMD).is_none() {
        if inittab_once(target, paths::NODE_SYNC_LOOP_SCRIPT)? {
            write_file(
                target,
                paths::NODE_SYNC_LOOP_SCRIPT,
                render::sync_loop_script(interval).as_bytes(),
                0o755,
            )?;
            return Ok(format!(
                "periodic sync: busybox inittab, every {interval} s"
            ));
        }
        return Ok(format!(
            "periodic sync: not set up, the image has no systemd and no busybox inittab (every {interval} s was asked for); use `rollout sync`"
        ));
    }
    let dir = "/etc/systemd/system";
    let service = format!("{dir}/{}", render::SYNC_UNIT_NAME);
    let timer = format!("{dir}/{}", render::SYNC_TIMER_NAME);
    write_file(target, &service, render::sync_unit().as_bytes(), 0o644)?;
    write_file(
        target,
        &timer,
        render::sync_timer(interval).as_bytes(),
        0o644,
    )?;
    link(
        target,
        &format!("{dir}/timers.target.wants/{}", render::SYNC_TIMER_NAME),
        &timer,
    )?;
    Ok(format!(
        "periodic sync: systemd timer {} every {interval} s",
        render::SYNC_TIMER_NAME
    ))
}

fn network(target: &Path, f: &NodeFacts) -> Result<String, ConfigureError> {
    let plan = f.plan;
    let networkd = first_present(
        target,
        &[
            "/usr/lib/systemd/systemd-networkd",
            "/lib/systemd/systemd-networkd",
        ],
    );
    let unit_dir = first_present(target, &["/usr/lib/systemd/system", "/lib/systemd/system"]);
    let how = match (networkd, unit_dir) {
        (Some(_), Some(units)) => {
            if plan.link.is_plain() {
                write_file(
                    target,
                    "/etc/systemd/network/10-rollout.network",
                    render::networkd(&plan.mac, &plan.network)?.as_bytes(),
                    0o644,
                )?;
            } else {
                for (path, text) in netconf::networkd_files(&plan.mac, &plan.network, &plan.link)? {
                    write_file(target, &path, text.as_bytes(), 0o644)?;
                }
            }
            // What `systemctl enable systemd-networkd` would create.
            let wants = "/etc/systemd/system";
            link(
                target,
                &format!("{wants}/multi-user.target.wants/systemd-networkd.service"),
                &format!("{units}/systemd-networkd.service"),
            )?;
            link(
                target,
                &format!("{wants}/dbus-org.freedesktop.network1.service"),
                &format!("{units}/systemd-networkd.service"),
            )?;
            if has(target, &format!("{units}/systemd-networkd.socket")) {
                link(
                    target,
                    &format!("{wants}/sockets.target.wants/systemd-networkd.socket"),
                    &format!("{units}/systemd-networkd.socket"),
                )?;
            }
            if has(
                target,
                &format!("{units}/systemd-networkd-wait-online.service"),
            ) {
                link(
                    target,
                    &format!(
                        "{wants}/network-online.target.wants/systemd-networkd-wait-online.service"
                    ),
                    &format!("{units}/systemd-networkd-wait-online.service"),
                )?;
            }
            if has(target, "/etc/network/interfaces") {
                write_file(
                    target,
                    "/etc/network/interfaces",
                    render::interfaces_loopback_only().as_bytes(),
                    0o644,
                )?;
            }
            format!("network: systemd-networkd, matched by MAC {}", plan.mac)
        }
        _ if !plan.link.is_plain() => {
            let boot = net::find_by_mac(&f.nics, &plan.mac).unwrap_or_else(|| f.iface.clone());
            let text = netconf::interfaces(&f.nics, &boot, &plan.mac, &plan.network, &plan.link)?;
            write_file(target, "/etc/network/interfaces", text.as_bytes(), 0o644)?;
            format!(
                "network: /etc/network/interfaces with {} (bond {}, vlan {})",
                boot,
                plan.link.bond.as_ref().map_or("none", |b| b.mode.as_str()),
                plan.link.vlan.map_or("none".into(), |v| v.to_string())
            )
        }
        _ => {
            write_file(
                target,
                "/etc/network/interfaces",
                render::interfaces(&f.iface, &plan.network)?.as_bytes(),
                0o644,
            )?;
            format!(
                "network: /etc/network/interfaces for {} (kernel name in the installer)",
                f.iface
            )
        }
    };
    if let NetworkPlan::Static { dns, .. } = &plan.network {
        if !dns.is_empty() {
            write_file(
                target,
                "/etc/resolv.conf",
                render::resolv_conf(dns).as_bytes(),
                0o644,
            )?;
        }
    }
    Ok(how)
}

/// Never keeps the image's host keys: every node must have its own, either
/// carried over from its previous install or generated here.
fn ssh_host_keys(target: &Path, identity: Option<&Identity>) -> Result<String, ConfigureError> {
    let dir = target.join("etc/ssh");
    let mut removed = 0;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path()).map_err(io("remove", &e.path()))?;
                removed += 1;
            }
        }
    }
    if let Some(kept) = identity.filter(|i| !i.host_keys.is_empty()) {
        for k in &kept.host_keys {
            write_file(target, &format!("/etc/ssh/{}", k.name), &k.contents, k.mode)?;
        }
        return Ok(format!(
            "ssh: removed {removed} image host keys, wrote the {} key files of the previous install",
            kept.host_keys.len()
        ));
    }
    let keygen = first_present(target, &["/usr/bin/ssh-keygen", "/bin/ssh-keygen"]);
    let Some(keygen) = keygen else {
        return Ok(format!(
            "ssh: no ssh-keygen in the image; removed {removed} image host keys (the image must generate keys on first boot)"
        ));
    };
    match sys::run_in_chroot(target, keygen, &["-A"]) {
        Ok(_) => Ok(format!("ssh: removed {removed} image host keys, generated fresh ones with ssh-keygen -A")),
        Err(e) => Ok(format!(
            "ssh: removed {removed} image host keys; ssh-keygen -A in the image failed ({e}), keys must be generated on first boot"
        )),
    }
}

/// The public host keys now in the root (`/etc/ssh/ssh_host_*_key.pub`, one
/// line each), for the `installed` report.
pub fn public_host_keys(target: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(target.join("etc/ssh")) else {
        return Vec::new();
    };
    let mut keys: Vec<(String, String)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("ssh_host_") && n.ends_with("_key.pub")
        })
        .filter(|e| {
            e.path()
                .symlink_metadata()
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let line = text.lines().next()?.trim().to_string();
            Some((e.file_name().to_string_lossy().to_string(), line))
        })
        .filter(|(_, l)| !l.is_empty())
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, l)| l).collect()
}

fn authorized_keys(target: &Path, keys: &[String]) -> Result<(), ConfigureError> {
    if keys.is_empty() {
        return Ok(());
    }
    let path = "/root/.ssh/authorized_keys";
    let existing = std::fs::read_to_string(in_target(target, path)?).unwrap_or_default();
    let mut lines: Vec<String> = existing.lines().map(str::to_string).collect();
    for k in keys {
        let k = k.trim();
        if !k.is_empty() && !lines.iter().any(|l| l.trim() == k) {
            lines.push(k.to_string());
        }
    }
    let dir = in_target(target, "/root/.ssh")?;
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod", &dir))?;
    write_file(target, path, (lines.join("\n") + "\n").as_bytes(), 0o600)
}

fn phone_home(target: &Path, installer: &Path) -> Result<String, ConfigureError> {
    let bin = in_target(target, paths::NODE_SYNC_BINARY)?;
    if let Some(parent) = bin.parent() {
        std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    std::fs::copy(installer, &bin).map_err(io("copy the installer to", &bin))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &bin))?;
    hook_phone_home(target)
}

/// Writes the phone-home script and hooks it into the image's init system.
/// Idempotent: `rollout-sync` runs it again after an update, which may have
/// brought a new `/etc/inittab`.
pub fn hook_phone_home(target: &Path) -> Result<String, ConfigureError> {
    write_file(
        target,
        paths::NODE_PHONE_HOME_SCRIPT,
        render::phone_home_script().as_bytes(),
        0o755,
    )?;
    let systemd = first_present(target, SYSTEMD);
    if systemd.is_some() {
        let unit = format!("/etc/systemd/system/{}", render::PHONE_HOME_UNIT_NAME);
        write_file(target, &unit, render::phone_home_unit().as_bytes(), 0o644)?;
        link(
            target,
            &format!(
                "/etc/systemd/system/multi-user.target.wants/{}",
                render::PHONE_HOME_UNIT_NAME
            ),
            &unit,
        )?;
        return Ok(format!(
            "phone-home: systemd unit {}",
            render::PHONE_HOME_UNIT_NAME
        ));
    }
    if has(target, "/etc/rc2.d") {
        write_file(
            target,
            "/etc/init.d/rollout-phone-home",
            render::phone_home_initd().as_bytes(),
            0o755,
        )?;
        for rl in 2..=5 {
            link(
                target,
                &format!("/etc/rc{rl}.d/S99rollout-phone-home"),
                "../init.d/rollout-phone-home",
            )?;
        }
        return Ok("phone-home: sysvinit script /etc/init.d/rollout-phone-home".into());
    }
    if inittab_once(target, paths::NODE_PHONE_HOME_SCRIPT)? {
        // An update may have brought the image's inittab back: the periodic
        // sync, where the install set one up, goes back in too.
        if has(target, paths::NODE_SYNC_LOOP_SCRIPT) {
            inittab_once(target, paths::NODE_SYNC_LOOP_SCRIPT)?;
        }
        return Ok("phone-home: busybox inittab ::once entry".into());
    }
    Ok(format!(
        "phone-home: no systemd, sysvinit or busybox inittab found; {} written but not hooked into boot",
        paths::NODE_PHONE_HOME_SCRIPT
    ))
}

/// Adds `::once:COMMAND` to a busybox inittab (once); false when the image
/// has no busybox inittab.
fn inittab_once(target: &Path, command: &str) -> Result<bool, ConfigureError> {
    let inittab = in_target(target, "/etc/inittab")?;
    let Ok(text) = std::fs::read_to_string(&inittab) else {
        return Ok(false);
    };
    if !text.contains("::sysinit:") {
        return Ok(false);
    }
    if !text.lines().any(|l| l == format!("::once:{command}")) {
        let mut t = text;
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t.push_str(&format!("::once:{command}\n"));
        std::fs::write(&inittab, t).map_err(io("write", &inittab))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
