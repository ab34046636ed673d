//! One simulated installer for `scripts/bench-scale.sh`: in its own network
//! namespace it does over the network what a node does from power-on to
//! phone-home, with the installer's own code wherever the installer has code
//! for it (so the bench cannot drift from the real thing): DHCP
//! (`dhcp_client`, `net::configure`), the iPXE script and the kernel and
//! initramfs over HTTP (what iPXE fetches; streamed and counted here), the
//! plan (`steps::fetch_plan`'s request), the copy step (`steps::copy_into`:
//! the copy slot, rsync with the first-install flags, progress events) into a
//! directory instead of a disk, the `installed` report and the phone-home.
//! Then it checks the copy against the image tree and deletes it.
//!
//!   sim_installer IFACE MAC SERVER_URL DEST IMAGE_ROOT
//!
//! Prints one line `SIM {json}` with the timings (Unix ms) and the outcome.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollout::wire::{self, Step};
use rollout_installer::report::Reporter;
use rollout_installer::steps::{self, Run};
use rollout_installer::{cmdline, dhcp_client, http_client, net, phone_home};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// GET `url` and count the body's bytes without keeping them (an initramfs
/// per client would not fit in memory for hundreds of clients).
fn fetch_discard(url: &str) -> Result<u64, String> {
    let u = http_client::parse_url(url).map_err(|e| e.to_string())?;
    let mut s = TcpStream::connect((u.host.as_str(), u.port)).map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rollout-sim\r\nConnection: close\r\n\r\n",
        u.path, u.host
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut head = Vec::new();
    let mut body = 0u64;
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("{url}: {e}"))?;
        if n == 0 {
            break;
        }
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body = (head.len() - at - 4) as u64;
                head.truncate(at + 4);
                let status = String::from_utf8_lossy(&head);
                if !status.starts_with("HTTP/1.1 200") {
                    return Err(format!(
                        "{url}: {}",
                        status.lines().next().unwrap_or_default()
                    ));
                }
                // Marks the head as complete even when no body byte came yet.
                if body == 0 {
                    head.extend_from_slice(b"\r\n\r\n");
                }
            }
        } else {
            body += n as u64;
        }
    }
    Ok(body)
}

/// The kernel and initramfs URLs and the boot secret in an install script.
fn parse_script(script: &str) -> Option<(String, String, String)> {
    let kernel_line = script.lines().find(|l| l.starts_with("kernel "))?;
    let kernel = kernel_line.split_whitespace().nth(1)?.to_string();
    let secret = kernel_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rollout.boot_secret="))?
        .to_string();
    let initrd = script
        .lines()
        .find(|l| l.starts_with("initrd "))?
        .split_whitespace()
        .find(|w| w.starts_with("http://"))?
        .to_string();
    Some((kernel, initrd, secret))
}

/// Whether `rel` (`/etc/hostname`) is left out by one of the plan's excludes.
fn excluded(rel: &str, excludes: &[String]) -> bool {
    excludes.iter().any(|e| {
        let prefix = e.trim_end_matches('*');
        rel.starts_with(prefix) || rel == e.trim_end_matches('/')
    })
}

/// Every regular file and symlink of the image (less the excludes) is in
/// `dest` with its size, mode and mtime: (files, bytes) checked.
fn verify(image: &Path, dest: &Path, excludes: &[String]) -> Result<(u64, u64), String> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![image.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let p = e.path();
            let rel = p.strip_prefix(image).unwrap_or(&p);
            let rel_str = format!("/{}", rel.display());
            if excluded(&rel_str, excludes) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
            if m.is_dir() {
                stack.push(p);
                continue;
            }
            let got = std::fs::symlink_metadata(dest.join(rel))
                .map_err(|e| format!("{rel_str} missing from the copy: {e}"))?;
            if got.len() != m.len() || got.mode() != m.mode() || got.mtime() != m.mtime() {
                return Err(format!(
                    "{rel_str} differs from the image (size, mode or mtime)"
                ));
            }
            files += 1;
            bytes += m.len();
        }
    }
    Ok((files, bytes))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: sim_installer IFACE MAC SERVER_URL DEST IMAGE_ROOT");
        std::process::exit(2);
    }
    let (iface, mac, server, dest, image) =
        (&a[1], &a[2], &a[3], Path::new(&a[4]), Path::new(&a[5]));
    let start = now_ms();
    let mut out = serde_json::json!({"mac": mac, "start_ms": start});
    let result = install(iface, mac, server, dest, image, &mut out);
    out["end_ms"] = now_ms().into();
    match result {
        Ok(()) => out["ok"] = true.into(),
        Err(e) => {
            out["ok"] = false.into();
            out["error"] = e.into();
        }
    }
    let _ = std::fs::remove_dir_all(dest);
    println!("SIM {out}");
}

fn install(
    iface: &str,
    mac: &str,
    server: &str,
    dest: &Path,
    image: &Path,
    out: &mut serde_json::Value,
) -> Result<(), String> {
    // DHCP with the installer's client, as its `dhcp` step does.
    let mac_bytes = cmdline::mac_bytes(mac).ok_or("not a MAC")?;
    let lease = dhcp_client::obtain(iface, mac_bytes, Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    net::configure(iface, lease.addr, lease.netmask, lease.router).map_err(|e| e.to_string())?;
    out["dhcp_ms"] = now_ms().into();
    // What iPXE does next: the script, then the kernel and the initramfs.
    let script = http_client::get(
        &format!("{server}/boot.ipxe?mac={mac}"),
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?
    .text();
    let (kernel, initrd, secret) =
        parse_script(&script).ok_or_else(|| format!("not an install script: {script}"))?;
    let boot_bytes = fetch_discard(&kernel)? + fetch_discard(&initrd)?;
    out["boot_bytes"] = boot_bytes.into();
    out["boot_ms"] = now_ms().into();
    // The installer proper, with its step wrapper (Started/Done events).
    let mut run = Run::new(Reporter::new(server, Instant::now()));
    let fail = |f: steps::Failure| format!("{}: {}", f.step, f.error);
    let request = wire::PlanRequest {
        boot_secret: Some(secret),
        hardware: None,
    };
    let plan = run
        .step(Step::FetchPlan, |run| {
            let plan = steps::get_plan_retrying(
                server,
                mac,
                &request,
                Duration::from_secs(300),
                &mut |wait, _| std::thread::sleep(wait),
            )?;
            run.set_plan(&plan);
            let msg = format!("install {}", plan.install_id);
            Ok((plan, msg))
        })
        .map_err(fail)?;
    out["copy_start_ms"] = now_ms().into();
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    run.step(Step::Copy, |run| {
        steps::copy_into(&mut run.reporter, &plan, dest)
    })
    .map_err(fail)?;
    out["copy_end_ms"] = now_ms().into();
    let (files, bytes) = verify(image, dest, &plan.excludes)?;
    out["verified_files"] = files.into();
    out["verified_bytes"] = bytes.into();
    run.step(Step::Finish, |run| {
        Ok(((), run.report_installed(&plan, vec![])))
    })
    .map_err(fail)?;
    // The installed OS's first boot report, with the node credential.
    let report = phone_home::Report {
        url: format!("{server}{}", wire::paths::PHONE_HOME),
        body: wire::PhoneHome {
            mac: mac.to_string(),
            hostname: plan.hostname.clone(),
            serial: plan.image.serial,
            boot_id: format!("sim-{}", now_ms()),
        },
        secret: plan.node.secret.clone(),
    };
    let r = phone_home::post(&report).map_err(|e| e.to_string())?;
    if !r.is_success() {
        return Err(format!("phone-home answered {}: {}", r.status, r.text()));
    }
    Ok(())
}
