//! The PXE boot test: blank nodes must get from firmware through DHCP, iPXE and
//! HTTP into the installer's initramfs. Shared by `vm-harness boot-test` and
//! `tests/pxe_boot.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{BRIDGE, SERVER_ADDR};
use crate::console::Pattern;
use crate::error::{Error, IoContext, Result};
use crate::initrd::{host_kernel, probe_initramfs, STARTING};
use crate::lab::{FirmwareChoice, Lab, LabOptions};
use crate::qemu::{Accel, Firmware};

/// Which server answers the nodes.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// `rollout serve` from this binary.
    Rollout(PathBuf),
    /// dnsmasq with DHCP + TFTP only: a reference to tell lab faults from server
    /// faults.
    Dnsmasq,
}

#[derive(Debug, Clone)]
pub struct BootTestOptions {
    pub lab_name: String,
    pub server: ServerKind,
    /// Installer kernel; default: the newest `/boot/vmlinuz-*`.
    pub kernel: Option<PathBuf>,
    /// Installer initramfs; default: a probe built around `/bin/busybox`.
    pub initramfs: Option<PathBuf>,
    /// One node per entry.
    pub firmwares: Vec<Firmware>,
    /// Console line every node must reach.
    pub expect: String,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub keep_dir: Option<PathBuf>,
    pub accel: Accel,
}

impl BootTestOptions {
    pub fn new(lab_name: &str, server: ServerKind) -> Self {
        BootTestOptions {
            lab_name: lab_name.into(),
            server,
            kernel: None,
            initramfs: None,
            firmwares: vec![Firmware::Bios, Firmware::Uefi],
            expect: STARTING.into(),
            timeout: Duration::from_secs(240),
            memory_mib: 1024,
            keep_dir: None,
            accel: Accel::Tcg,
        }
    }
}

#[derive(Debug)]
pub struct NodeOutcome {
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    /// Time from power-on to the expected line, or why it was not reached.
    pub result: Result<Duration, String>,
    pub console_log: PathBuf,
    pub console_tail: Vec<String>,
}

#[derive(Debug)]
pub struct BootTestReport {
    pub nodes: Vec<NodeOutcome>,
    pub server_log: PathBuf,
    pub server_log_tail: Vec<String>,
}

impl BootTestReport {
    pub fn all_passed(&self) -> bool {
        self.nodes.iter().all(|n| n.result.is_ok())
    }

    /// One line per node; on failure also the console and server log tails.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            match &n.result {
                Ok(d) => out.push_str(&format!(
                    "ok   {} ({}, {}): reached the installer in {:.1} s\n",
                    n.name,
                    n.firmware,
                    n.mac,
                    d.as_secs_f64()
                )),
                Err(e) => {
                    out.push_str(&format!(
                        "FAIL {} ({}, {}): {e}\n",
                        n.name, n.firmware, n.mac
                    ));
                    out.push_str(&format!("  console tail ({}):\n", n.console_log.display()));
                    for l in &n.console_tail {
                        out.push_str(&format!("    {l}\n"));
                    }
                }
            }
        }
        if !self.all_passed() {
            out.push_str(&format!(
                "  server log tail ({}):\n",
                self.server_log.display()
            ));
            for l in &self.server_log_tail {
                out.push_str(&format!("    {l}\n"));
            }
        }
        out
    }
}

/// Puts the installer kernel and initramfs where the server serves them:
/// `{state_dir}/boot/vmlinuz` and `{state_dir}/boot/initramfs.img`.
pub fn stage_boot_files(state_dir: &Path, kernel: &Path, initramfs: Option<&Path>) -> Result<()> {
    let boot = state_dir.join("boot");
    fs::create_dir_all(&boot).ctx("creating the boot directory", &boot)?;
    fs::copy(kernel, boot.join("vmlinuz")).ctx("copying the kernel", kernel)?;
    let dest = boot.join("initramfs.img");
    match initramfs {
        Some(p) => {
            fs::copy(p, &dest).ctx("copying the initramfs", p)?;
            // The storage tools archive `rollout initramfs build` puts beside it,
            // fetched by installers whose layout has RAID, LVM or XFS.
            let tools = p.with_file_name(rollout::wire::initramfs::STORAGE_TOOLS_IMG);
            if tools.is_file() {
                fs::copy(
                    &tools,
                    boot.join(rollout::wire::initramfs::STORAGE_TOOLS_IMG),
                )
                .ctx("copying the storage tools archive", &tools)?;
            }
        }
        None => {
            let img = probe_initramfs(Path::new("/bin/busybox"))?;
            fs::write(&dest, img).ctx("writing the probe initramfs", &dest)?;
        }
    }
    Ok(())
}

/// A TFTP root for the dnsmasq reference server: iPXE binaries, the boot files
/// and a script that boots them the way rollout's does.
fn stage_tftp_root(lab: &Lab) -> Result<PathBuf> {
    let root = lab.dir().join("tftp");
    fs::create_dir_all(&root).ctx("creating the TFTP root", &root)?;
    for f in ["undionly.kpxe", "ipxe.efi"] {
        let src = Path::new("/usr/lib/ipxe").join(f);
        fs::copy(&src, root.join(f)).ctx("copying an iPXE binary", &src)?;
    }
    let boot = lab.state_dir().join("boot");
    for f in ["vmlinuz", "initramfs.img"] {
        fs::copy(boot.join(f), root.join(f)).ctx("copying a boot file", boot.join(f))?;
    }
    let script = format!(
        "#!ipxe\nkernel vmlinuz initrd=initramfs.img console=ttyS0 \
         rollout.server=http://{SERVER_ADDR}:80 rollout.mac=${{net0/mac}}\n\
         initrd initramfs.img\nboot\n"
    );
    fs::write(root.join("boot.ipxe"), script).ctx("writing boot.ipxe", &root)?;
    Ok(root)
}

/// Runs the whole test and reports per node. An `Err` means the lab itself could
/// not be set up; node failures are in the report.
pub fn run(opts: &BootTestOptions) -> Result<BootTestReport> {
    let mut lab = Lab::create_with(LabOptions {
        name: opts.lab_name.clone(),
        nodes: 0,
        firmware: FirmwareChoice::Bios,
        memory_mib: opts.memory_mib,
        keep_dir: opts.keep_dir.clone(),
        accel: opts.accel,
        ..LabOptions::default()
    })?;
    for fw in &opts.firmwares {
        lab.add_node(*fw)?;
    }
    let kernel = match &opts.kernel {
        Some(k) => k.clone(),
        None => host_kernel()?,
    };
    stage_boot_files(&lab.state_dir(), &kernel, opts.initramfs.as_deref())?;
    let config = lab.write_config(&lab.config())?;
    match &opts.server {
        ServerKind::Rollout(bin) => {
            let ns = lab.netns().name().to_string();
            let s = lab.spawn_server(&config, bin)?;
            eprintln!(
                "vm-harness: rollout serve (pid {}) in {ns} on {BRIDGE}",
                s.pid()
            );
            let ready = lab.wait_server_ready(Duration::from_secs(30));
            if let Err(e) = ready {
                let tail = lab.server().map(|s| s.log_tail(30)).unwrap_or_default();
                return Err(Error::ServerNotReady {
                    cause: e.to_string(),
                    log_tail: tail.join("\n"),
                });
            }
        }
        ServerKind::Dnsmasq => {
            let root = stage_tftp_root(&lab)?;
            lab.spawn_dnsmasq(&root)?;
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    let pattern = Pattern::substring(opts.expect.clone());
    let marks: Vec<u64> = lab.nodes().iter().map(|n| n.console_mark()).collect();
    lab.start_all()?;
    let start = Instant::now();
    let mut results: Vec<Option<Result<Duration, String>>> = vec![None; marks.len()];
    while results.iter().any(|r| r.is_none()) {
        for (i, node) in lab.nodes_mut().iter_mut().enumerate() {
            if results[i].is_some() {
                continue;
            }
            match node.poll_console(marks[i], &pattern) {
                Ok(true) => {
                    eprintln!(
                        "vm-harness: {} ({}) reached {pattern} after {:.1} s",
                        node.name(),
                        node.firmware(),
                        start.elapsed().as_secs_f64()
                    );
                    results[i] = Some(Ok(start.elapsed()));
                    // The probe powers off by itself; a real installer goes on
                    // installing, which this test does not wait for.
                    let _ = node.power_off();
                }
                Ok(false) if start.elapsed() >= opts.timeout => {
                    results[i] = Some(Err(format!(
                        "no {pattern} on the console within {} s",
                        opts.timeout.as_secs()
                    )));
                }
                Ok(false) => {}
                Err(e) => results[i] = Some(Err(e.to_string())),
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let nodes = lab
        .nodes()
        .iter()
        .zip(results)
        .map(|(n, r)| NodeOutcome {
            name: n.name().into(),
            mac: n.mac().into(),
            firmware: n.firmware(),
            result: r.expect("loop ends when all are set"),
            console_log: n.console_log(),
            console_tail: n.console_tail(40),
        })
        .collect();
    let (server_log, server_log_tail) = match lab.server() {
        Some(s) => (s.log_path().to_path_buf(), s.log_tail(40)),
        None => (PathBuf::new(), Vec::new()),
    };
    Ok(BootTestReport {
        nodes,
        server_log,
        server_log_tail,
    })
}
