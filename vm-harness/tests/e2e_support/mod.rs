#![allow(dead_code)] // each test binary uses a different part of it
//! Shared by the end-to-end tests: the once-per-run fixture, a lab guard that
//! prints the consoles and the server log when a test fails, waiting on the
//! server's record, and the host-side disk checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vm_harness::config::RolloutConfig;
use vm_harness::demo::{fetch_node, NodeProgress, NodeRecord};
use vm_harness::disk::DiskImage;
use vm_harness::e2e::{self, Artifacts, ImageKind, FAKE_KEY_MARK};
use vm_harness::{Firmware, Lab, LabOptions};

/// QEMU under TCG on two cores: one lab at a time, whatever the test threads.
static SERIAL: Mutex<()> = Mutex::new(());
static ARTIFACTS: OnceLock<Result<Artifacts, String>> = OnceLock::new();

/// The fixture, or `None` (after printing why) where the e2e tests cannot run.
pub fn fixture() -> Option<(MutexGuard<'static, ()>, &'static Artifacts)> {
    if let Some(why) = e2e::skip_reason() {
        testkit::prereq::missing(why);
        return None;
    }
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let a = ARTIFACTS.get_or_init(|| Artifacts::prepare().map_err(|e| e.to_string()));
    match a {
        Ok(a) => Some((guard, a)),
        Err(e) => panic!("preparing the e2e fixture: {e}"),
    }
}

/// A lab that prints every console tail and the server log if the test panics.
pub struct E2eLab {
    pub lab: Lab,
    pub server: SocketAddr,
    pub started: Instant,
}

impl Drop for E2eLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== diagnostics of lab {} ====\n{}",
                self.lab.name(),
                self.lab.diagnostics(40)
            );
        }
    }
}

impl E2eLab {
    /// A lab with one node per entry of `firmwares`, serving `image`.
    pub fn new(
        a: &Artifacts,
        name: &str,
        firmwares: &[Firmware],
        image: ImageKind,
        disk_bytes: u64,
    ) -> E2eLab {
        Self::new_with(a, name, firmwares, image, disk_bytes, |_| {})
    }

    /// [`E2eLab::new`] with the lab's config changed by `tweak` before the server starts.
    pub fn new_with(
        a: &Artifacts,
        name: &str,
        firmwares: &[Firmware],
        image: ImageKind,
        disk_bytes: u64,
        tweak: impl FnOnce(&mut RolloutConfig),
    ) -> E2eLab {
        // ROLLOUT_E2E_KEEP=DIR keeps each lab's disks and logs in DIR/<lab>.
        Self::build(a, name, image, disk_bytes, |lab| {
            for fw in firmwares {
                lab.add_node(*fw)?;
            }
            let mut config = lab.config();
            tweak(&mut config);
            Ok(config)
        })
    }

    /// A lab that `setup` fills (nodes, other hosts) and whose server config it
    /// returns; then the server starts with that config.
    pub fn build(
        a: &Artifacts,
        name: &str,
        image: ImageKind,
        disk_bytes: u64,
        setup: impl FnOnce(&mut Lab) -> vm_harness::Result<RolloutConfig>,
    ) -> E2eLab {
        let mut lab = Lab::create_with(LabOptions {
            name: name.into(),
            disk_bytes,
            keep_dir: std::env::var_os("ROLLOUT_E2E_KEEP").map(|d| Path::new(&d).join(name)),
            ..LabOptions::default()
        })
        .expect("creating the lab");
        let config = match setup(&mut lab) {
            Ok(c) => c,
            Err(e) => panic!("setting up lab {name}: {e}\n{}", lab.diagnostics(30)),
        };
        let server = match a.serve_with(&mut lab, image, config) {
            Ok(s) => s,
            Err(e) => panic!("starting rollout serve: {e}\n{}", lab.diagnostics(30)),
        };
        E2eLab {
            lab,
            server,
            started: Instant::now(),
        }
    }

    /// Polls the server's record of `id` until `done` holds; panics when the
    /// install fails (unless `done` accepts failures), the node powers off or
    /// time runs out.
    pub fn wait_record(
        &mut self,
        id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&NodeRecord) -> bool,
    ) -> NodeRecord {
        let start = Instant::now();
        let marks: Vec<u64> = self.lab.nodes().iter().map(|n| n.console_mark()).collect();
        let mut last = String::new();
        loop {
            // Until the server has a record (it learns a node at its first boot).
            let rec = fetch_node(&self.lab, self.server, id).ok();
            let line = rec
                .as_ref()
                .map_or_else(|| format!("{id}: no record yet"), |r| r.line());
            if line != last {
                eprintln!("[{:>4}s] {line}", self.started.elapsed().as_secs());
                last = line;
            }
            if let Some(rec) = &rec {
                if done(rec) {
                    return rec.clone();
                }
                assert!(
                    !rec.is_failed(),
                    "{id} failed while waiting for {what}: {last}"
                );
            }
            let node = self
                .lab
                .nodes_mut()
                .iter_mut()
                .find(|n| n.name() == id || n.mac() == id);
            if let Some(n) = node {
                // A node with a BMC is off between a cycle's two halves.
                assert!(
                    n.bmc().is_some() || n.is_running(),
                    "{id} powered off while waiting for {what}"
                );
                let i =
                    self.lab.nodes().iter().position(|x| {
                        rec.as_ref().is_some_and(|r| x.mac() == r.mac) || x.name() == id
                    });
                let text = vm_harness::console::read_from(
                    &self.lab.nodes()[i.unwrap_or(0)].console_log(),
                    marks[i.unwrap_or(0)],
                );
                // OVMF out of boot options sits in its setup UI forever: fail now.
                assert!(
                    !text.contains("starting Boot0000 \"UiApp\""),
                    "{id}: OVMF found nothing to boot and opened its setup UI while waiting for {what}"
                );
            }
            assert!(
                start.elapsed() < timeout,
                "{id}: no {what} within {} s; last record: {last}",
                timeout.as_secs(),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until `id` is installed and its installed OS phoned home.
    /// An install seen on its console must have left the root clean: the first
    /// boot after it replays no journal.
    pub fn wait_booted(&mut self, id: &str, timeout: Duration) -> NodeRecord {
        let node = self.lab.nodes().iter().position(|n| n.name() == id);
        let mark = node.map(|i| self.lab.nodes()[i].console_mark());
        let rec = self.wait_record(id, "install and phone-home", timeout, |r| r.is_done());
        if let (Some(i), Some(mark)) = (node, mark) {
            let text = vm_harness::console::read_from(&self.lab.nodes()[i].console_log(), mark);
            if let Some(at) = text.rfind("rollout: finish: installed") {
                let boot = &text[at..];
                assert!(
                    !boot.contains("recovery required"),
                    "{id}: the installer rebooted with the root still mounted: its first boot replayed the journal"
                );
            }
        }
        rec
    }

    pub fn server_log(&mut self) -> String {
        let p = self.lab.server().expect("server").log_path().to_path_buf();
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// `rollout -c CONFIG ARGS…` on the host, outside the lab namespace: the
    /// image commands (`image enter` runs apt against the Debian mirror).
    pub fn host_cli(&self, a: &Artifacts, args: &[&str]) -> String {
        self.run_cli(Command::new(&a.rollout), args)
    }

    /// `rollout -c CONFIG ARGS…` inside the lab namespace (the CLI talks to the
    /// server over its API at the lab address).
    pub fn cli(&self, a: &Artifacts, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.lab.netns().name()])
            .arg(&a.rollout);
        self.run_cli(cmd, args)
    }

    /// Runs `cmd -c CONFIG ARGS…`, asserts it succeeded, returns stdout+stderr.
    fn run_cli(&self, mut cmd: Command, args: &[&str]) -> String {
        let out = cmd
            .arg("-c")
            .arg(self.lab.dir().join("rollout.toml"))
            .args(args)
            .output()
            .expect("running the rollout CLI");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rollout {}: {text}", args.join(" "));
        text
    }
}

/// The IPv4 address the installed tiny OS of `node` runs on, from the line its
/// rcS prints after DHCP (`rollout-tiny: NAME booted from disk, serial N, A.B.C.D/24`).
pub fn installed_address(node: &mut vm_harness::Node, name: &str) -> std::net::Ipv4Addr {
    let want = format!("rollout-tiny: {name} booted from disk, serial");
    node.wait_for_console(&want.as_str().into(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{name} never printed its boot line: {e}"));
    let line = node
        .console_tail(400)
        .into_iter()
        .rev()
        .find(|l| l.contains(&want))
        .expect("the boot line is in the console");
    let addr = line
        .rsplit(", ")
        .next()
        .and_then(|a| a.trim().split('/').next())
        .and_then(|a| a.parse().ok());
    addr.unwrap_or_else(|| panic!("{name} booted without an address: {line}"))
}

/// What a disk check found, for comparisons across nodes.
#[derive(Debug)]
pub struct DiskFacts {
    pub machine_id: String,
    /// File name → contents of `/etc/ssh/ssh_host_*`.
    pub host_keys: BTreeMap<String, String>,
}

/// Checks a powered-off node's disk from the host: GPT with the firmware's boot
/// partition, a 1 GiB ext3 root and a 2 GiB swap, the hostname, fstab by UUID,
/// a bootloader for the firmware, and host keys that are not the image's.
pub fn check_disk(qcow2: &Path, hostname: &str, firmware: Firmware) -> DiskFacts {
    let mut d =
        DiskImage::open(qcow2).unwrap_or_else(|e| panic!("opening {}: {e}", qcow2.display()));
    let gpt = &d.sgdisk;
    assert!(
        !gpt.contains("invalid GPT") && !gpt.contains("MBR only"),
        "no valid GPT:\n{gpt}"
    );
    let boot_code = match firmware {
        Firmware::Bios => "EF02",
        Firmware::Uefi => "EF00",
    };
    assert_eq!(d.partition(1).unwrap().code, boot_code, "{gpt}");
    assert_eq!(
        d.partition(2).unwrap().size_bytes(),
        1 << 30,
        "root size:\n{gpt}"
    );
    assert_eq!(
        d.partition(3).unwrap().size_bytes(),
        2 << 30,
        "swap size:\n{gpt}"
    );
    let root = d.blkid(2).unwrap();
    let swap = d.blkid(3).unwrap();
    assert_eq!(
        root.get("TYPE").map(String::as_str),
        Some("ext3"),
        "{root:?}"
    );
    assert_eq!(
        swap.get("TYPE").map(String::as_str),
        Some("swap"),
        "{swap:?}"
    );
    let (root_uuid, swap_uuid) = (root["UUID"].clone(), swap["UUID"].clone());

    let mnt = d.mount(2).expect("mounting the root file system");
    let read = |p: &str| {
        std::fs::read_to_string(mnt.join(p))
            .unwrap_or_else(|e| panic!("reading /{p} on the disk: {e}"))
    };
    assert_eq!(read("etc/hostname").trim(), hostname);
    let fstab = read("etc/fstab");
    let mounts: Vec<Vec<&str>> = fstab
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.len() >= 3)
        .collect();
    let root_uuid_spec = format!("UUID={root_uuid}");
    let swap_uuid_spec = format!("UUID={swap_uuid}");
    assert!(
        mounts
            .iter()
            .any(|w| w[0] == root_uuid_spec && w[1] == "/" && w[2] == "ext3"),
        "fstab has no / on {root_uuid_spec}:\n{fstab}"
    );
    assert!(
        mounts
            .iter()
            .any(|w| w[0] == swap_uuid_spec && w[2] == "swap"),
        "fstab has no swap on {swap_uuid_spec}:\n{fstab}"
    );
    match firmware {
        Firmware::Bios => {
            let conf = read("boot/extlinux/extlinux.conf");
            assert!(conf.contains(&format!("root=UUID={root_uuid}")), "{conf}");
        }
        Firmware::Uefi => {
            let efi = d
                .fat_read(1, "/EFI/BOOT/BOOTX64.EFI")
                .unwrap_or_else(|e| panic!("no \\EFI\\BOOT\\BOOTX64.EFI on the ESP: {e}"));
            assert_eq!(&efi[..2], b"MZ", "BOOTX64.EFI is not a PE image");
            let entry = d
                .fat_read(1, "/loader/entries/rollout.conf")
                .expect("systemd-boot entry on the ESP");
            let entry = String::from_utf8_lossy(&entry);
            assert!(entry.contains(&format!("root=UUID={root_uuid}")), "{entry}");
        }
    }
    let machine_id = read("etc/machine-id").trim().to_string();
    assert_eq!(machine_id.len(), 32, "machine-id {machine_id:?}");
    let mut host_keys = BTreeMap::new();
    for e in std::fs::read_dir(mnt.join("etc/ssh"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ssh_host_") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            assert!(
                !text.contains(FAKE_KEY_MARK),
                "{name} is the image's host key, copied onto the node"
            );
            host_keys.insert(name, text);
        }
    }
    DiskFacts {
        machine_id,
        host_keys,
    }
}

/// The root (partition 2) is an ext filesystem with a journal as large as
/// its partition, and e2fsck finds nothing wrong in it (journal replayed on a
/// scratch copy: the node was switched off, not shut down).
pub fn check_root_fills_its_partition(qcow2: &Path) {
    let mut d =
        DiskImage::open(qcow2).unwrap_or_else(|e| panic!("opening {}: {e}", qcow2.display()));
    let part = d.partition(2).unwrap().size_bytes();
    let dev = d.loop_device(2).unwrap();
    let copy = qcow2.with_extension("root.raw");
    let cp = std::process::Command::new("dd")
        .args([
            format!("if={dev}"),
            format!("of={}", copy.display()),
            "bs=4M".into(),
            "conv=sparse".into(),
        ])
        .output()
        .unwrap();
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    drop(d);
    let head = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(&copy)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).into_owned();
    let field = |name: &str| -> u64 {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{head}"))
    };
    assert_eq!(
        field("Block count:") * field("Block size:"),
        part,
        "the root does not fill its partition:\n{head}"
    );
    assert!(head.contains("has_journal"), "no journal:\n{head}");
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fy"])
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    // 0: clean, 1: errors corrected (the journal replay of a switched-off node).
    let said = String::from_utf8_lossy(&fsck.stdout);
    assert!(
        matches!(fsck.status.code(), Some(0 | 1))
            && !said.contains("Inode bitmap differences")
            && !said.contains("Block bitmap differences"),
        "e2fsck on the root: {:?}\n{said}",
        fsck.status.code()
    );
}

/// Asserts that no host key file is shared between any two of `disks`.
pub fn assert_distinct_keys(disks: &[&DiskFacts]) {
    for (i, a) in disks.iter().enumerate() {
        assert!(!a.host_keys.is_empty(), "disk {i} has no SSH host keys");
        for b in &disks[i + 1..] {
            for (name, key) in &a.host_keys {
                assert_ne!(
                    b.host_keys.get(name),
                    Some(key),
                    "{name} is the same on two nodes"
                );
            }
            assert_ne!(a.machine_id, b.machine_id, "two nodes share a machine-id");
        }
    }
}
