//! `vm-harness`: the virtual lab from the command line.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use vm_harness::boottest::{self, BootTestOptions, ServerKind};
use vm_harness::ci::{LabState, Phase};
use vm_harness::e2e::{Artifacts, ImageKind, ImageSource};
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
    /// Bring a lab up in the background: every node installs the image and
    /// phones home, then this prints each node's name, address and SSH command
    /// line and returns, leaving the lab running (for CI scripts).
    Up(UpArgs),
    /// Internal: the process that keeps a lab of `up` running.
    #[command(hide = true)]
    Keep(UpArgs),
    /// Run a command on a node of a lab brought up by `up` (as root, over SSH
    /// with the server's key); exits with the command's status.
    Ssh {
        #[arg(long, default_value = "ci")]
        name: String,
        /// Node name, MAC or address.
        node: String,
        /// The command (after `--`); none: an interactive login.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// The state of a lab brought up by `up`.
    Status {
        #[arg(long, default_value = "ci")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Tear a lab down (one of `up`, or one a crashed run left behind).
    Down {
        #[arg(long, default_value = "ci")]
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
    /// Lab name; the namespace is rollout-lab-NAME.
    #[arg(long, default_value = "ci")]
    name: String,
    #[arg(long, default_value = "2")]
    nodes: usize,
    /// bios, uefi or mixed (odd nodes BIOS, even UEFI).
    #[arg(long, default_value = "bios")]
    firmware: FirmwareChoice,
    /// tiny, debian, or a directory holding a root filesystem (with sshd for
    /// `vm-harness ssh`), imported as the lab's image.
    #[arg(long, default_value = "debian")]
    image: String,
    /// Disk size per node (e.g. 8G).
    #[arg(long, default_value = "8G")]
    disk_size: String,
    /// Memory per node in MiB.
    #[arg(long, default_value = "1024")]
    memory: u32,
    /// Seconds for every node to install and phone home.
    #[arg(long, default_value = "1200")]
    timeout: u64,
    /// Print the lab as JSON (name, nodes with address and ssh) on stdout.
    #[arg(long)]
    json: bool,
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
    /// Instead of the stage rounds: one node by rsync (the reference), then
    /// N nodes at once (the largest of --nodes, default 3) with the multicast
    /// first install on; prints the server's bytes ÷ image bytes for both and
    /// checks every node's disk against the reference install.
    #[arg(long)]
    multicast: bool,
    /// First installs unpack the image's HTTP tar stream before rsync
    /// (`[install] tar_prefill = true`).
    #[arg(long)]
    tar_prefill: bool,
    /// Ext roots are written as the serial's block image instead of copied
    /// file by file (`[install] block_image = true`).
    #[arg(long)]
    block_image: bool,
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
        Cmd::Keep(a) => keep(a),
        Cmd::Ssh {
            name,
            node,
            command,
        } => ssh(&name, &node, &command),
        Cmd::Status { name, json } => status(&name, json),
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
                stop_keeper(&n)?;
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

fn image_source(image: &str) -> Result<ImageSource> {
    Ok(match image {
        "tiny" => ImageSource::Kind(ImageKind::Tiny),
        "debian" => ImageSource::Kind(ImageKind::Debian),
        dir => {
            let path = PathBuf::from(dir);
            if !path.is_dir() {
                bail!("--image {dir:?}: use tiny, debian or a directory holding a root filesystem");
            }
            ImageSource::Dir(path.canonicalize()?)
        }
    })
}

/// Starts the keeper detached (its own session, output in its log) and waits
/// for it to report the lab ready or failed.
fn up(a: UpArgs) -> Result<()> {
    image_source(&a.image)?;
    if let Some(old) = LabState::read(&a.name).filter(|s| s.keeper_alive()) {
        bail!(
            "lab {} is already up (keeper pid {}): `vm-harness down --name {}` first",
            a.name,
            old.keeper_pid,
            a.name
        );
    }
    let log_path = LabState::log_path(&a.name);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("keep")
        .args(["--name", &a.name, "--nodes", &a.nodes.to_string()])
        .args(["--firmware", &a.firmware.to_string(), "--image", &a.image])
        .args([
            "--disk-size",
            &a.disk_size,
            "--memory",
            &a.memory.to_string(),
        ])
        .args(["--timeout", &a.timeout.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the keeper outlives this process
    // and must not get the terminal's Ctrl-C.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let keeper = cmd.spawn().context("starting the lab keeper")?;
    let pid = keeper.id();
    eprintln!(
        "lab {}: keeper pid {pid}, log {}",
        a.name,
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(a.timeout + 600);
    let mut shown = 0;
    loop {
        // Progress on stderr, so stdout holds only the answer.
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text.lines().skip(shown) {
            eprintln!("  {line}");
        }
        shown = text.lines().count();
        let state = LabState::read(&a.name).filter(|s| s.keeper_pid == pid);
        match state {
            Some(s) if s.phase == Phase::Ready => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", s.table());
                }
                return Ok(());
            }
            Some(s) if s.phase == Phase::Failed => {
                stop_keeper(&a.name)?;
                bail!("lab {} failed: {}", a.name, s.error.unwrap_or_default());
            }
            _ => {}
        }
        if !Path::new(&format!("/proc/{pid}")).exists() || STOP.load(Ordering::SeqCst) {
            let _ = vm_harness::cleanup(&a.name);
            bail!(
                "the lab keeper ended before the lab was up; see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            stop_keeper(&a.name)?;
            bail!("lab {} not up in time; see {}", a.name, log_path.display());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The keeper: brings the lab up, reports through `lab.json`, then holds it
/// until SIGTERM (`down`).
fn keep(a: UpArgs) -> Result<()> {
    let source = image_source(&a.image)?;
    let disk_bytes = vm_harness::qemu::parse_size(&a.disk_size)
        .with_context(|| format!("bad --disk-size {:?}: use e.g. 8G or 512M", a.disk_size))?;
    let art = Artifacts::prepare().context("preparing the installer and images")?;
    let mut lab = Lab::create_with(LabOptions {
        name: a.name.clone(),
        nodes: a.nodes,
        firmware: a.firmware,
        disk_bytes,
        memory_mib: a.memory,
        ..LabOptions::default()
    })?;
    let config = lab.config();
    let server = art.serve_source(&mut lab, &source, config)?;
    let mut state = LabState::starting(&lab, server);
    state.write()?;
    lab.start_all()?;
    let followed = vm_harness::demo::follow(
        &mut lab,
        server,
        Duration::from_secs(a.timeout),
        || STOP.load(Ordering::SeqCst),
        |line| println!("{line}"),
    );
    match followed {
        Ok(records) => {
            state.nodes = vm_harness::ci::lab_nodes(&lab, &records);
            state.phase = Phase::Ready;
            state.write()?;
            println!("lab {} ready", a.name);
        }
        Err(e) => {
            state.phase = Phase::Failed;
            state.error = Some(format!("{e}\n{}", lab.diagnostics(20)));
            state.write()?;
            bail!("lab {}: {e}", a.name);
        }
    }
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("tearing down lab {}", lab.name());
    Ok(())
}

fn ready_lab(name: &str) -> Result<LabState> {
    let state = LabState::read(name)
        .with_context(|| format!("no lab {name} is up (`vm-harness up --name {name}`)"))?;
    if !state.keeper_alive() {
        bail!("lab {name} is gone (its keeper ended): `vm-harness down --name {name}`, then `up` again");
    }
    if state.phase != Phase::Ready {
        bail!("lab {name} is not ready yet ({:?})", state.phase);
    }
    Ok(state)
}

fn ssh(name: &str, node: &str, command: &[String]) -> Result<()> {
    let state = ready_lab(name)?;
    let n = state.node(node).with_context(|| {
        let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        format!(
            "lab {name} has no node {node:?}; it has {}",
            names.join(", ")
        )
    })?;
    let remote = rollout::fleet::ssh::remote_command(command);
    let argv = vm_harness::ci::ssh_argv(
        &state.netns,
        &state.dir.join("state"),
        &n.name,
        &n.address,
        &remote,
    );
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .context("running ssh")?;
    std::process::exit(status.code().unwrap_or(255));
}

fn status(name: &str, json: bool) -> Result<()> {
    let state = LabState::read(name).with_context(|| format!("no lab {name} is up"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        print!("{}", state.table());
        if !state.keeper_alive() {
            println!(
                "its keeper (pid {}) has ended: `vm-harness down --name {name}`",
                state.keeper_pid
            );
        }
    }
    Ok(())
}

/// Asks a lab's keeper to tear down and waits for it (then the caller cleans up).
fn stop_keeper(name: &str) -> Result<()> {
    let Some(state) = LabState::read(name) else {
        return Ok(());
    };
    if !state.keeper_alive() {
        return Ok(());
    }
    // SAFETY: plain kill(2) on the pid the keeper wrote for itself.
    unsafe {
        libc::kill(state.keeper_pid as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    while state.keeper_alive() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let multicast_nodes = match a.nodes.as_slice() {
        [1, 3, 6] => 3, // the default list: the three nodes
        sizes => sizes.iter().copied().max().unwrap_or(3),
    };
    let opts = vm_harness::bench::BenchOptions {
        sizes: a.nodes,
        firmware: a.firmware,
        image: a.image,
        timeout: Duration::from_secs(a.timeout),
        keep_dir: a.keep,
        tar_prefill: a.tar_prefill,
        block_image: a.block_image,
    };
    let stop = || STOP.load(Ordering::SeqCst);
    if a.multicast {
        let r =
            vm_harness::bench_multicast::run_multicast_bench(&art, &opts, multicast_nodes, &stop)?;
        print!("{}", vm_harness::bench_multicast::render(&r));
        if r.disks.iter().any(|(_, d)| !d.is_empty()) {
            bail!("a multicast install's disk differs from the unicast install's");
        }
        return Ok(());
    }
    let (rounds, raw) = vm_harness::bench::run_bench(&art, &opts, &stop)?;
    print!("{}", vm_harness::bench::render(&rounds, raw));
    Ok(())
}
