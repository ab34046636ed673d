//! `vm-harness`: the virtual lab from the command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use vm_harness::boottest::{self, BootTestOptions, ServerKind};
use vm_harness::e2e::{Artifacts, ImageKind};
use vm_harness::progress::{summary_table, Tracker};
use vm_harness::{Accel, Firmware, FirmwareChoice, Lab, LabOptions};

#[derive(Parser)]
#[command(
    version,
    about = "A virtual lab of blank QEMU nodes that PXE-boot from rollout"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the lab, start `rollout serve` and the nodes, and stay up until Ctrl-C.
    Up(UpArgs),
    /// Remove a lab left behind by a crashed run (its namespace and processes).
    Down {
        #[arg(long, default_value = "demo")]
        name: String,
        /// Every `rollout-lab-*` namespace on this machine.
        #[arg(long)]
        all: bool,
    },
    /// Boot blank nodes and check each reaches the installer's first console line.
    BootTest(BootTestArgs),
    /// `up`, then follow every node through the server's API until each is
    /// installed and booted its new OS (exit 0), or one fails (exit 1).
    Demo(DemoArgs),
    /// Time power-on to phone-home by stage for 1, 3 and 6 concurrent nodes,
    /// and the copy stage against a raw transfer of the same bytes.
    Bench(BenchArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Lab name; the namespace is rollout-lab-NAME.
    #[arg(long, default_value = "demo")]
    name: String,
    /// `rollout` binary [default: $ROLLOUT_BIN, else target/debug/rollout].
    #[arg(long)]
    rollout_bin: Option<PathBuf>,
    /// Installer kernel [default: newest /boot/vmlinuz-*].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Installer initramfs [default: $ROLLOUT_INITRAMFS, else a busybox probe].
    #[arg(long)]
    initramfs: Option<PathBuf>,
    #[arg(long, default_value = "1024")]
    memory: u32,
    /// tcg, or kvm (probed with a 5 s limit, falls back to tcg).
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// Keep disks, logs and config in this directory.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct UpArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "2")]
    nodes: usize,
    /// bios, uefi or mixed.
    #[arg(long, default_value = "mixed")]
    firmware: FirmwareChoice,
    /// Disk size per node (e.g. 8G).
    #[arg(long, default_value = "8G")]
    disk_size: String,
}

#[derive(Args, Clone)]
struct DemoArgs {
    /// Lab name; the namespace is rollout-lab-NAME.
    #[arg(long, default_value = "demo")]
    name: String,
    #[arg(long, default_value = "3")]
    nodes: usize,
    /// bios, uefi or mixed (odd nodes BIOS, even UEFI).
    #[arg(long, default_value = "mixed")]
    firmware: FirmwareChoice,
    /// Disk size per node (e.g. 8G).
    #[arg(long, default_value = "8G")]
    disk_size: String,
    /// debian (built once with `rollout image build`, cached under target/) or tiny.
    #[arg(long, default_value = "debian")]
    image: ImageKind,
    /// Keep the node disks (qcow2), logs and config in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Seconds for all nodes to install and boot.
    #[arg(long, default_value = "1800")]
    timeout: u64,
    /// Stop after the installs (by default a Debian demo then changes the image
    /// and updates the running nodes with `rollout sync --all`).
    #[arg(long)]
    no_maintenance: bool,
}

#[derive(Args, Clone)]
struct BenchArgs {
    /// Concurrency levels, one lab each.
    #[arg(long, value_delimiter = ',', default_value = "1,3,6")]
    nodes: Vec<usize>,
    #[arg(long, default_value = "bios")]
    firmware: FirmwareChoice,
    #[arg(long, default_value = "tiny")]
    image: ImageKind,
    /// Keep each round's disks and logs under DIR/n<N>.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Seconds per round.
    #[arg(long, default_value = "1800")]
    timeout: u64,
}

#[derive(Args, Clone)]
struct BootTestArgs {
    #[command(flatten)]
    common: Common,
    /// One node per firmware listed.
    #[arg(long, value_delimiter = ',', default_value = "bios,uefi")]
    firmware: Vec<String>,
    /// Seconds each node has to reach the installer.
    #[arg(long, default_value = "240")]
    timeout: u64,
    /// Serve with dnsmasq instead of rollout (tells lab faults from server faults).
    #[arg(long)]
    dnsmasq: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Catch Ctrl-C so destructors tear the lab down instead of leaving it behind.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    match cli.cmd {
        Cmd::Up(a) => up(a),
        Cmd::Demo(a) => demo(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Down { name, all } => {
            let names = if all {
                vm_harness::netns::list_lab_namespaces()
                    .into_iter()
                    .filter_map(|n| {
                        n.strip_prefix(vm_harness::netns::NS_PREFIX)
                            .map(String::from)
                    })
                    .collect()
            } else {
                vec![name]
            };
            for n in names {
                vm_harness::cleanup(&n).with_context(|| format!("cleaning up lab {n}"))?;
                println!("lab {n}: cleaned up");
            }
            Ok(())
        }
        Cmd::BootTest(a) => boot_test(a),
    }
}

fn rollout_bin(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone()
        .or_else(|| std::env::var_os("ROLLOUT_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/debug/rollout"))
}

fn initramfs(arg: &Option<PathBuf>) -> Option<PathBuf> {
    arg.clone()
        .or_else(|| std::env::var_os("ROLLOUT_INITRAMFS").map(PathBuf::from))
}

fn accel(s: &str) -> Result<Accel> {
    match s {
        "tcg" => Ok(Accel::choose(false)),
        "kvm" => Ok(Accel::choose(true)),
        _ => bail!("unknown accelerator {s:?}: use tcg or kvm"),
    }
}

fn boot_test(a: BootTestArgs) -> Result<()> {
    let server = if a.dnsmasq {
        ServerKind::Dnsmasq
    } else {
        ServerKind::Rollout(rollout_bin(&a.common.rollout_bin))
    };
    let mut opts = BootTestOptions::new(&a.common.name, server);
    opts.firmwares = a
        .firmware
        .iter()
        .map(|f| match f.as_str() {
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            _ => bail!("unknown firmware {f:?}: use bios or uefi"),
        })
        .collect::<Result<_>>()?;
    opts.kernel = a.common.kernel.clone();
    opts.initramfs = initramfs(&a.common.initramfs);
    opts.timeout = Duration::from_secs(a.timeout);
    opts.memory_mib = a.common.memory;
    opts.keep_dir = a.common.keep_dir.clone();
    opts.accel = accel(&a.common.accel)?;
    let report = boottest::run(&opts)?;
    print!("{}", report.render());
    if !report.all_passed() {
        bail!("boot test failed");
    }
    Ok(())
}

fn bring_up(a: &UpArgs) -> Result<Lab> {
    let c = &a.common;
    let disk_bytes = vm_harness::qemu::parse_size(&a.disk_size)
        .with_context(|| format!("bad --disk-size {:?}: use e.g. 8G or 512M", a.disk_size))?;
    let mut lab = Lab::create_with(LabOptions {
        name: c.name.clone(),
        nodes: a.nodes,
        firmware: a.firmware,
        disk_bytes,
        memory_mib: c.memory,
        keep_dir: c.keep_dir.clone(),
        accel: accel(&c.accel)?,
    })?;
    let kernel = match &c.kernel {
        Some(k) => k.clone(),
        None => vm_harness::initrd::host_kernel()?,
    };
    boottest::stage_boot_files(
        &lab.state_dir(),
        &kernel,
        initramfs(&c.initramfs).as_deref(),
    )?;
    let cfg = lab.write_config(&lab.config())?;
    lab.spawn_server(&cfg, &rollout_bin(&c.rollout_bin))?;
    lab.wait_server_ready(Duration::from_secs(30))
        .with_context(|| format!("waiting for rollout serve\n{}", lab.diagnostics(30)))?;
    lab.start_all()?;
    println!(
        "lab {} up in namespace {}; files in {}",
        lab.name(),
        lab.netns().name(),
        lab.dir().display()
    );
    for n in lab.nodes() {
        println!(
            "  {} {} {} console {}",
            n.name(),
            n.firmware(),
            n.mac(),
            n.console_log().display()
        );
    }
    Ok(lab)
}

fn up(a: UpArgs) -> Result<()> {
    let mut lab = bring_up(&a)?;
    println!("Ctrl-C to tear down");
    let started = Instant::now();
    let mut last = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if last.elapsed() >= Duration::from_secs(15) {
            last = Instant::now();
            for n in lab.nodes_mut() {
                let state = if n.is_running() { "running" } else { "off" };
                let line = n.console_tail(1).pop().unwrap_or_default();
                println!(
                    "[{:>4}s] {} {state}: {line}",
                    started.elapsed().as_secs(),
                    n.name()
                );
            }
        }
    }
    println!("tearing down lab {}", lab.name());
    Ok(())
}

fn demo(a: DemoArgs) -> Result<()> {
    let disk_bytes = vm_harness::qemu::parse_size(&a.disk_size)
        .with_context(|| format!("bad --disk-size {:?}: use e.g. 8G or 512M", a.disk_size))?;
    let art = Artifacts::prepare().context("preparing the installer and images")?;
    if a.image == ImageKind::Debian {
        let img = art.debian_image().context("building the Debian image")?;
        println!("image: Debian bookworm from {}", img.display());
    }
    let mut lab = Lab::create_with(LabOptions {
        name: a.name.clone(),
        nodes: a.nodes,
        firmware: a.firmware,
        disk_bytes,
        keep_dir: a.keep.clone(),
        ..LabOptions::default()
    })?;
    let server = art.serve(&mut lab, a.image)?;
    println!(
        "lab {}: rollout serve on {server} in namespace {}; files in {}",
        lab.name(),
        lab.netns().name(),
        lab.dir().display()
    );
    lab.start_all()?;
    for n in lab.nodes() {
        println!(
            "  powered on {} ({}, {}), console {}",
            n.name(),
            n.firmware(),
            n.mac(),
            n.console_log().display()
        );
    }
    let mut t = Tracker::new(&lab, server);
    let res = t.run(
        &mut lab,
        Duration::from_secs(a.timeout),
        || STOP.load(Ordering::SeqCst),
        |line| println!("{line}"),
    );
    match res {
        Ok(()) => {
            println!(
                "\nall {} nodes installed, rebooted from their own disks and phoned home:\n",
                t.nodes.len()
            );
            print!("{}", summary_table(&t.nodes));
            if a.image == ImageKind::Debian && !a.no_maintenance {
                let image = lab.config().install.image.clone();
                let serial = vm_harness::maintain::maintain(
                    &lab,
                    server,
                    &art.rollout,
                    &image,
                    &mut |line| println!("{line}"),
                )
                .context("the maintenance phase")?;
                println!("\nevery node runs serial {serial} of image {image}, updated in place");
            }
            if let Some(k) = &a.keep {
                println!("\ndisks and logs kept in {}", k.display());
            }
            println!("tearing down lab {}", lab.name());
            Ok(())
        }
        Err(e) => {
            eprintln!("{}", lab.diagnostics(30));
            bail!("demo failed: {e}")
        }
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    let art = Artifacts::prepare().context("preparing the installer and images")?;
    let opts = vm_harness::bench::BenchOptions {
        sizes: a.nodes,
        firmware: a.firmware,
        image: a.image,
        timeout: Duration::from_secs(a.timeout),
        keep_dir: a.keep,
    };
    let stop = || STOP.load(Ordering::SeqCst);
    let (rounds, raw) = vm_harness::bench::run_bench(&art, &opts, &stop)?;
    print!("{}", vm_harness::bench::render(&rounds, raw));
    Ok(())
}
