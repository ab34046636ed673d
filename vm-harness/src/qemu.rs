//! One lab node: a QEMU machine with a blank disk that boots from the network first.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bmc::{self, Bmc};
use crate::console::{self, Pattern};
use crate::devices::{self, Hardware, NicModel};
use crate::error::{Error, IoContext, Result};
use crate::proc::{run, ProcessGroup};

pub const QEMU: &str = "qemu-system-x86_64";
/// Debian's ipxe-qemu ROM for virtio-net; it carries both the legacy PXE and the
/// EFI driver, so the same NIC boots under SeaBIOS and OVMF.
pub const VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// BIOS nodes are SeaBIOS on the i440fx machine; UEFI nodes OVMF on q35, with a
/// per-node copy of the variable store.
pub use rollout::wire::Firmware;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// TCG unless KVM is asked for (`want_kvm`, or `ROLLOUT_KVM=1`) and a probe
    /// shows it actually runs guest code. Nested KVM on some hosts opens fine and
    /// then hangs on the first instruction, hence the probe.
    pub fn choose(want_kvm: bool) -> Accel {
        let env = std::env::var("ROLLOUT_KVM").is_ok_and(|v| v == "1");
        if !(want_kvm || env) {
            return Accel::Tcg;
        }
        if probe(Accel::Kvm, Duration::from_secs(5)) {
            Accel::Kvm
        } else {
            eprintln!("vm-harness: KVM did not boot a probe kernel within 5 s; using TCG");
            Accel::Tcg
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Whether `accel` boots a kernel to its /init within `timeout`. Nested KVM
/// here gets through SeaBIOS and then stalls (timers never fire), so the probe
/// boots the host kernel with the probe initramfs and waits for its first line.
pub fn probe(accel: Accel, timeout: Duration) -> bool {
    if accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
        return false;
    }
    let Ok(kernel) = crate::initrd::host_kernel() else {
        return false;
    };
    let Ok(img) = crate::initrd::probe_initramfs(Path::new("/bin/busybox")) else {
        return false;
    };
    let initrd = std::env::temp_dir().join(format!("vm-harness-probe-{}.cpio", std::process::id()));
    if fs::write(&initrd, img).is_err() {
        return false;
    }
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", accel.as_str(), "-m", "256", "-no-reboot"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let ok = (|| {
        let mut pg = ProcessGroup::spawn("accel probe", &mut cmd).ok()?;
        let stdout = pg_stdout(&mut pg)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                if String::from_utf8_lossy(&line).contains(crate::initrd::STARTING) {
                    let _ = tx.send(());
                    return;
                }
                line.clear();
            }
        });
        let ok = rx.recv_timeout(timeout).is_ok();
        pg.kill(Duration::from_millis(200));
        Some(ok)
    })()
    .unwrap_or(false);
    let _ = fs::remove_file(&initrd);
    ok
}

fn pg_stdout(pg: &mut ProcessGroup) -> Option<std::process::ChildStdout> {
    pg.child_mut().stdout.take()
}

/// The MAC of lab node number `index` (1-based), e.g. `52:54:00:00:00:01`.
pub fn mac_for(index: usize) -> String {
    let [hi, lo] = (index as u16).to_be_bytes();
    rollout::mac::MacAddr::new([0x52, 0x54, 0x00, 0x00, hi, lo]).to_string()
}

/// Parses sizes like `8G`, `512M`, `1073741824`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'G' | 'g') => (&s[..i], 1u64 << 30),
        (i, 'M' | 'm') => (&s[..i], 1u64 << 20),
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        _ => (s, 1),
    };
    u64::from_str(num).ok()?.checked_mul(mult)
}

/// How a node's firmware boots from the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetBoot {
    /// The NIC carries iPXE as its option ROM (Debian's ipxe-qemu), as QEMU
    /// machines usually do: the ROM itself answers the firmware's network boot
    /// and asks the server for `boot.ipxe` straight away.
    #[default]
    IpxeRom,
    /// UEFI only: no option ROM, OVMF drives the NIC itself and PXE-boots as
    /// a server's own firmware does: DHCP (arch 7), then `snponly.efi` over TFTP.
    FirmwarePxe,
    /// UEFI only: no option ROM and OVMF's PXE stacks switched off through its
    /// fw_cfg knobs, so the firmware's only network option is HTTP boot: a URL
    /// in the DHCP answer, `ipxe.efi` over HTTP, never TFTP.
    HttpOnly,
}

/// How to build one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub accel: Accel,
    pub boot: NetBoot,
    pub hardware: Hardware,
}

/// A QEMU node in the lab. The QEMU process is killed when this is dropped; the
/// disk, variable store and logs stay in the node's directory.
#[derive(Debug)]
pub struct Node {
    spec: NodeSpec,
    netns: String,
    tap: String,
    dir: PathBuf,
    run_dir: PathBuf,
    proc: Option<ProcessGroup>,
    /// Appended to the QEMU command line at the next start (e.g. `-kernel`).
    extra_args: Vec<String>,
    /// The node's IPMI BMC, which then owns its power (see [`crate::bmc`]).
    bmc: Option<Bmc>,
    /// The BMC's VM port QEMU connects to (set before the BMC starts: the BMC
    /// needs the whole QEMU command line).
    bmc_vm_port: Option<u16>,
    /// Disks pulled out of the machine (by index): left off the command line
    /// from the next start, their files kept.
    pulled_disks: std::collections::BTreeSet<usize>,
}

impl Node {
    /// Creates the node's blank disk (and UEFI variable store) under `dir`.
    /// `run_dir` holds the QMP socket and pid file; it must be short (socket paths
    /// are limited to 107 bytes).
    pub(crate) fn prepare(
        spec: NodeSpec,
        netns: &str,
        tap: &str,
        dir: PathBuf,
        run_dir: &Path,
    ) -> Result<Node> {
        fs::create_dir_all(&dir).ctx("creating the node directory", &dir)?;
        let node = Node {
            netns: netns.to_string(),
            tap: tap.to_string(),
            run_dir: run_dir.to_path_buf(),
            dir,
            spec,
            proc: None,
            extra_args: Vec::new(),
            bmc: None,
            bmc_vm_port: None,
            pulled_disks: Default::default(),
        };
        node.create_disks()?;
        if node.spec.firmware == Firmware::Uefi && !node.vars_path().exists() {
            fs::copy(OVMF_VARS, node.vars_path())
                .ctx("copying the OVMF variable store", OVMF_VARS)?;
        }
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn mac(&self) -> &str {
        &self.spec.mac
    }
    pub fn firmware(&self) -> Firmware {
        self.spec.firmware
    }
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }
    /// Changes how the firmware boots from the network (from the next start).
    pub fn set_net_boot(&mut self, boot: NetBoot) {
        self.spec.boot = boot;
    }
    /// Changes the node's devices (from the next start).
    pub fn set_hardware(&mut self, hardware: Hardware) {
        self.spec.hardware = hardware;
    }
    /// The tap of the spare NIC ([`Hardware::spare_nic_first`]); the lab creates it.
    pub fn spare_tap(&self) -> String {
        format!("{}s", self.tap)
    }
    pub fn spare_mac(&self) -> String {
        let index: usize = self
            .spec
            .name
            .trim_start_matches("node")
            .parse()
            .unwrap_or(0);
        devices::spare_mac(index)
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The first disk (the only one unless [`Hardware::disks`] says more).
    pub fn disk_path(&self) -> PathBuf {
        self.nth_disk_path(0)
    }
    /// Disk `index` (0-based): `disk.qcow2`, then `disk2.qcow2`, …
    pub fn nth_disk_path(&self, index: usize) -> PathBuf {
        match index {
            0 => self.dir.join("disk.qcow2"),
            i => self.dir.join(format!("disk{}.qcow2", i + 1)),
        }
    }
    /// Pulls disk `index` out of the machine from the next start (its file
    /// stays), as a technician would to test a mirror; [`Node::plug_disk`] puts it back.
    pub fn pull_disk(&mut self, index: usize) {
        self.pulled_disks.insert(index);
    }
    pub fn plug_disk(&mut self, index: usize) {
        self.pulled_disks.remove(&index);
    }
    /// Blank disks for every disk the hardware has and that has no file yet.
    pub(crate) fn create_disks(&self) -> Result<()> {
        for i in 0..usize::from(self.spec.hardware.disks.max(1)) {
            let disk = self.nth_disk_path(i);
            if !disk.exists() {
                run(Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&disk)
                    .arg(self.spec.disk_bytes.to_string()))?;
            }
        }
        Ok(())
    }
    pub fn vars_path(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }
    /// The serial console, appended to across restarts.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// QEMU's own stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qmp", self.spec.name))
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.spec.name))
    }

    /// The full QEMU argument list (without the program).
    pub fn qemu_args(&self) -> Vec<String> {
        let s = &self.spec;
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| x.to_string()));
        // graphics=off makes SeaBIOS mirror its screen, and with it the iPXE
        // ROM's messages, onto the serial console: no VGA here to show them.
        let machine = match s.firmware {
            Firmware::Bios => "pc,graphics=off",
            Firmware::Uefi => "q35",
        };
        push(&[
            "-name",
            &s.name,
            "-accel",
            s.accel.as_str(),
            "-machine",
            machine,
        ]);
        push(&["-m", &s.memory_mib.to_string(), "-smp", "1"]);
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        let log = self.console_log();
        push(&[
            "-chardev",
            &format!("file,id=ser0,path={},append=on", log.display()),
            "-serial",
            "chardev:ser0",
        ]);
        let qmp = self.qmp_socket();
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp.display()),
        ]);
        push(&[
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
        ]);
        // The ROM's legacy image is built for the modern virtio-net id (1af4:1041);
        // QEMU only patches ids into its *default* ROM, so with an explicit
        // romfile a transitional device (1af4:1000) makes SeaBIOS skip the ROM.
        // disable-legacy=on presents 1041 and the ids match under both firmwares.
        // SeaBIOS has no boot variables: bootindex puts the NIC first and the
        // disk second, and when iPXE exits (an installed node) it falls through
        // to the disk. UEFI nodes get no bootindex, like a real machine whose
        // network boot was set up once in its NVRAM: OVMF rewrites BootOrder from
        // QEMU's bootindex list at every boot, which would put all four network
        // options (PXEv4/v6, HTTPv4/v6: minutes of timeouts under TCG) back in
        // front of the disk entry the installer placed right after the NIC. On a
        // blank disk OVMF's own order tries the disk, finds no loader, and
        // PXE-boots.
        let (net_index, disks_in_order) = match s.firmware {
            Firmware::Bios => (",bootindex=1", true),
            Firmware::Uefi => ("", false),
        };
        // The virtio ROM is given explicitly (see above); other models carry
        // QEMU's own iPXE ROM, which under OVMF is also their only UEFI driver.
        let rom = match (s.hardware.nic, s.boot) {
            (NicModel::Virtio, NetBoot::IpxeRom) => Some(VIRTIO_ROM),
            (NicModel::Virtio, NetBoot::FirmwarePxe | NetBoot::HttpOnly) => Some(""),
            _ => None,
        };
        if s.hardware.spare_nic_first {
            // Ahead on the PCI bus, no ROM: the firmware boots the second NIC.
            push(&[
                "-netdev",
                &format!(
                    "tap,id=n1,ifname={},script=no,downscript=no",
                    self.spare_tap()
                ),
                "-device",
                &devices::nic_device(s.hardware.nic, "n1", &self.spare_mac(), Some(""), ""),
            ]);
        }
        push(&[
            "-device",
            &devices::nic_device(s.hardware.nic, "n0", &s.mac, rom, net_index),
        ]);
        let mut drives = Vec::new();
        for i in 0..usize::from(s.hardware.disks.max(1)) {
            if self.pulled_disks.contains(&i) {
                continue;
            }
            let id = format!("d{i}");
            // cache=unsafe: the guest's flushes stop at QEMU instead of each
            // waiting for an fdatasync of the host (the guest's journal flushes
            // every few seconds). On a busy CI host such a wait can outlast the
            // 30 s an NVMe command gets before Linux resets the controller, and
            // a full test run saw the NVMe disk drop out so. A lab disk is thrown
            // away with its lab; powering off (QMP quit, SIGTERM) still writes
            // everything out.
            push(&[
                "-drive",
                &format!(
                    "file={},if=none,id={id},format=qcow2,discard=unmap,cache=unsafe",
                    self.nth_disk_path(i).display()
                ),
            ]);
            // The first disk keeps the serial it always had.
            let serial = match i {
                0 => format!("rollout-{}", s.name),
                i => format!("rollout-{}-{}", s.name, i + 1),
            };
            // SeaBIOS tries the disks in bootindex order after the NIC.
            let boot = match disks_in_order {
                true => format!(",bootindex={}", i + 2),
                false => String::new(),
            };
            drives.push(devices::Drive { id, serial, boot });
        }
        a.extend(devices::disk_devices(&s.hardware, &drives));
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| x.to_string()));
        if s.firmware == Firmware::Uefi {
            let vars = self.vars_path();
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
            if s.boot == NetBoot::HttpOnly {
                push(&[
                    "-fw_cfg",
                    "name=opt/org.tianocore/IPv4PXESupport,string=n",
                    "-fw_cfg",
                    "name=opt/org.tianocore/IPv6PXESupport,string=n",
                ]);
            }
        }
        if let Some(port) = self.bmc_vm_port {
            a.extend(bmc::qemu_args(port));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Gives the node an IPMI BMC (`ipmi_sim` in the lab namespace) that from
    /// now on owns its power: the harness no longer starts it; whoever speaks
    /// IPMI to the BMC does. `index` is the node's 1-based number in the lab.
    pub fn attach_bmc(&mut self, index: usize) -> Result<&Bmc> {
        self.bmc_vm_port = Some(bmc::vm_port(index));
        let mut qemu = vec![QEMU.to_string()];
        qemu.extend(self.qemu_args());
        let bmc = Bmc::start(
            &self.netns,
            &self.spec.name,
            index,
            &self.dir.join("bmc"),
            &qemu,
            &self.qemu_log(),
            &self.pid_file(),
            &self.run_dir.join(format!("{}.bmc.pid", self.spec.name)),
        )?;
        Ok(self.bmc.insert(bmc))
    }

    /// The node's BMC, if it has one.
    pub fn bmc(&self) -> Option<&Bmc> {
        self.bmc.as_ref()
    }

    /// The pid of the QEMU its BMC started, if that QEMU runs.
    fn bmc_powered_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the parenthesised command name; Z is a zombie.
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z').then_some(pid)
    }

    /// Extra QEMU arguments for the following starts (empty to undo). The
    /// benchmark boots a node's own VM straight into a kernel this way.
    pub fn set_extra_args(&mut self, args: Vec<String>) {
        self.extra_args = args;
    }

    /// Powers the node on (QEMU inside the lab namespace).
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        if self.bmc.is_some() {
            return Err(Error::Netns {
                ns: self.netns.clone(),
                message: format!(
                    "{} is powered by its BMC: power it on over IPMI (`rollout node power {} on`)",
                    self.spec.name, self.spec.name
                ),
            });
        }
        self.create_disks()?;
        let _ = fs::remove_file(self.qmp_socket());
        let qemu_log = self.qemu_log();
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&qemu_log)
            .ctx("opening the QEMU log", &qemu_log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, QEMU])
            .args(self.qemu_args())
            .stdout(err.try_clone().ctx("opening the QEMU log", &qemu_log)?)
            .stderr(err);
        let mut pg = ProcessGroup::spawn(&format!("qemu {}", self.spec.name), &mut cmd)?;
        pg.write_pid_file(&self.pid_file())?;
        self.proc = Some(pg);
        Ok(())
    }

    /// Whether QEMU is running (a guest poweroff ends the process).
    pub fn is_running(&mut self) -> bool {
        if self.bmc.is_some() {
            return self.bmc_powered_pid().is_some();
        }
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Current length of the console log; pass it to [`Node::wait_for_console_after`]
    /// to wait for output printed from now on (e.g. after a reboot).
    pub fn console_mark(&self) -> u64 {
        console::mark(&self.console_log())
    }

    /// Waits until `pattern` appears anywhere on the console.
    pub fn wait_for_console(&mut self, pattern: &Pattern, timeout: Duration) -> Result<Duration> {
        self.wait_for_console_after(0, pattern, timeout)
    }

    /// Waits until `pattern` appears in console output past byte `mark`. Returns
    /// how long the wait took. Fails early if QEMU exits without printing it.
    pub fn wait_for_console_after(
        &mut self,
        mark: u64,
        pattern: &Pattern,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.poll_console(mark, pattern)? {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("{pattern} on the console of {}", self.spec.name),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One non-blocking look: `Ok(true)` once `pattern` is on the console past
    /// `mark`, an error if QEMU is not running and never printed it.
    pub fn poll_console(&mut self, mark: u64, pattern: &Pattern) -> Result<bool> {
        let log = self.console_log();
        let exited = match self.proc.as_mut() {
            // Off is a state its BMC may end at any time: only the timeout counts.
            None if self.bmc.is_some() => None,
            None => Some("not started".to_string()),
            Some(p) => p.try_wait().map(|st| st.to_string()),
        };
        // Read after checking the exit so output flushed just before exit counts.
        if pattern.find_end(&console::read_from(&log, mark)).is_some() {
            return Ok(true);
        }
        match exited {
            Some(status) => Err(Error::Exited {
                what: format!("node {}", self.spec.name),
                status,
                waiting_for: format!("its console showed {pattern}"),
                log,
            }),
            None => Ok(false),
        }
    }

    /// The last `n` lines of the serial console.
    pub fn console_tail(&self, n: usize) -> Vec<String> {
        console::tail(&self.console_log(), n)
    }

    /// Pulls the plug: QMP `quit`, or killing QEMU if QMP does not answer.
    pub fn power_off(&mut self) -> Result<()> {
        self.kill_bmc_powered();
        let Some(mut pg) = self.proc.take() else {
            return Ok(());
        };
        if pg.is_running() {
            let _ = self.qmp("quit");
            if pg.wait_timeout(Duration::from_secs(5)).is_none() {
                pg.kill(Duration::from_secs(1));
            }
        }
        drop(pg);
        Ok(())
    }

    /// Power cycle: a fresh QEMU process on the same disk and variable store.
    pub fn restart(&mut self) -> Result<()> {
        self.power_off()?;
        self.start()
    }

    /// Hardware reset through QMP, keeping the QEMU process.
    pub fn reset(&mut self) -> Result<()> {
        self.qmp("system_reset").map(|_| ())
    }

    /// Runs one QMP command without arguments and returns the raw reply line
    /// (through the workspace's one QMP client, `rollout::power::qmp`).
    pub fn qmp(&self, command: &str) -> Result<String> {
        rollout::power::qmp::execute(&self.qmp_socket(), &[command], Duration::from_secs(5))
            .map_err(|e| Error::Qmp {
                socket: e.socket,
                message: e.message,
            })
    }
}

impl Node {
    /// Pulls the plug on a QEMU its BMC started (the BMC then reports off).
    fn kill_bmc_powered(&mut self) {
        if let Some(pid) = self.bmc_powered_pid() {
            crate::proc::kill_pid(pid as u32);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_bmc_powered();
        // Killing (not QMP) keeps teardown fast; the disk needs no clean shutdown.
        if let Some(mut pg) = self.proc.take() {
            pg.kill(Duration::from_secs(1));
        }
        let _ = fs::remove_file(self.qmp_socket());
    }
}

#[cfg(test)]
mod tests;
