//! The benchmark: power-on to phone-home for 1, 3 and 6 concurrent nodes,
//! split by stage, and the copy stage against a raw lower bound measured in
//! the same run.
//!
//! The lower bound: the image, as one tar stream (its file bytes plus tar
//! headers), sent over the same lab bridge and tap into the same QEMU machine
//! (same firmware type, memory, NIC and accelerator as node1), read by busybox
//! `wget` into /dev/null. It is timed inside the guest with /proc/uptime. What
//! it leaves out is exactly what rsync adds: per-file round trips, checksums,
//! and writing through ext3 onto virtio-blk.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::SERVER_ADDR;
use crate::console::Pattern;
use crate::e2e::{Artifacts, ImageKind};
use crate::error::{Error, IoContext, Result};
use crate::initrd::{busybox_skeleton, host_kernel};
use crate::lab::{FirmwareChoice, Lab, LabOptions};
use crate::proc::run;
use crate::progress::{secs, NodeTimes, Tracker, STAGES};

/// Results of one concurrency level.
#[derive(Debug)]
pub struct Round {
    pub nodes: Vec<NodeTimes>,
    /// Apparent size of the image tree: what rsync copies onto a blank disk.
    pub image_bytes: u64,
}

/// The raw transfer measured in the guest.
#[derive(Debug, Clone, Copy)]
pub struct RawCopy {
    pub bytes: u64,
    pub seconds: f64,
    /// The same stream unpacked by busybox tar onto a fresh ext3 on the
    /// node's virtio disk (what the copy also pays: writing the files);
    /// None when that part could not run.
    pub disk_seconds: Option<f64>,
}

pub struct BenchOptions {
    pub sizes: Vec<usize>,
    pub firmware: FirmwareChoice,
    pub image: ImageKind,
    pub timeout: Duration,
    pub keep_dir: Option<PathBuf>,
    /// `[install] tar_prefill` on the server.
    pub tar_prefill: bool,
    /// `[install] block_image` on the server.
    pub block_image: bool,
}

/// Runs every round, then the raw copy in the last lab's node1 VM.
pub fn run_bench(
    a: &Artifacts,
    o: &BenchOptions,
    stop: &dyn Fn() -> bool,
) -> Result<(Vec<Round>, Option<RawCopy>)> {
    let mut rounds = Vec::new();
    let mut raw = None;
    for (i, &n) in o.sizes.iter().enumerate() {
        eprintln!("== bench: {n} node(s) at once");
        let mut lab = Lab::create_with(LabOptions {
            name: "bench".into(),
            nodes: n,
            firmware: o.firmware,
            keep_dir: o.keep_dir.as_ref().map(|d| d.join(format!("n{n}"))),
            ..LabOptions::default()
        })?;
        let mut config = lab.config();
        config.install.tar_prefill = o.tar_prefill;
        config.install.block_image = o.block_image;
        let server = a.serve_with(&mut lab, o.image, config)?;
        lab.start_all()?;
        let mut t = Tracker::new(&lab, server);
        if let Err(e) = t.run(&mut lab, o.timeout, stop, |l| eprintln!("{l}")) {
            eprintln!("{}", lab.diagnostics(30));
            return Err(e);
        }
        if i == 0 {
            raw = match raw_copy(&mut lab) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("bench: raw copy measurement failed: {e}");
                    None
                }
            };
        }
        let root = lab.state_dir().join("images/default/published/");
        let image_bytes = run(Command::new("du").arg("-sb").arg(&root))
            .ok()
            .and_then(|o| o.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        rounds.push(Round {
            nodes: t.nodes,
            image_bytes,
        });
    }
    Ok((rounds, raw))
}

fn raw_init_script(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n",
    );
    for m in modules {
        s.push_str(&format!("insmod /m/{m}\n"));
    }
    s.push_str(&format!(
        "sleep 1\nfor n in /sys/class/net/e*; do nic=${{n##*/}}; done\n\
         ip link set \"$nic\" up\nip addr add 10.44.0.90/24 dev \"$nic\"\nsleep 2\n\
         read t0 rest < /proc/uptime\n\
         wget -q -O /dev/null http://{SERVER_ADDR}:9000/image.tar\n\
         rc=$?\n\
         read t1 rest < /proc/uptime\n\
         echo \"rollout-raw: t0=$t0 t1=$t1 rc=$rc\"\n\
         t2=0 t3=0 rc=99\n\
         if /sbin/mke2fs -q -t ext3 -F /dev/vda && mkdir -p /mnt && mount -t ext3 /dev/vda /mnt; then\n\
         read t2 rest < /proc/uptime\n\
         wget -q -O - http://{SERVER_ADDR}:9000/image.tar | tar -x -C /mnt\n\
         rc=$?\n\
         read t3 rest < /proc/uptime\n\
         fi\n\
         echo \"rollout-raw-disk: t0=$t2 t1=$t3 rc=$rc\"\npoweroff -f\n"
    ));
    s
}

/// Adds `program` and the shared libraries `ldd` names for it, at their
/// paths on this machine.
fn add_with_libraries(archive: &mut rollout::cpio::Archive, program: &Path) -> Result<()> {
    let mut files = vec![program.to_path_buf()];
    for l in run(Command::new("ldd").arg(program))?.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = l.split("=>").last().unwrap_or_default().trim();
        let path = path.split(" (").next().unwrap_or_default();
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    for f in files {
        let rel = f.strip_prefix("/").unwrap_or(&f).to_path_buf();
        let mut dirs: Vec<PathBuf> = rel.ancestors().skip(1).map(Path::to_path_buf).collect();
        dirs.reverse();
        for d in dirs.iter().filter(|d| !d.as_os_str().is_empty()) {
            archive.add_dir(&d.to_string_lossy(), 0o755);
        }
        let bytes = fs::read(&f).ctx("reading a program for the raw probe", &f)?;
        archive.add_file(&rel.to_string_lossy(), 0o755, bytes);
    }
    Ok(())
}

/// Boots node1's VM straight into the host kernel with a busybox initramfs
/// that streams the image tar from the lab server into /dev/null.
pub fn raw_copy(lab: &mut Lab) -> Result<RawCopy> {
    let kernel = host_kernel()?;
    let kver = kernel
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let mut deps = String::new();
    // crc32c_generic: ext4's checksums, where the CPU model has no SSE4.2 for crc32c-intel.
    for m in [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "crc32c_generic",
        "ext4",
    ] {
        deps += &run(Command::new("modprobe").args(["-S", &kver, "--show-depends", m]))?;
    }
    let mut mods: Vec<PathBuf> = Vec::new();
    for l in deps.lines() {
        if let Some(p) = l.strip_prefix("insmod ") {
            let p = PathBuf::from(p.trim());
            if !mods.contains(&p) {
                mods.push(p);
            }
        }
    }
    let mut archive = busybox_skeleton(Path::new("/bin/busybox"))?;
    archive.add_dir("m", 0o755);
    let mut names = Vec::new();
    for m in &mods {
        let name = m.file_name().unwrap().to_string_lossy().to_string();
        archive.add_file(
            &format!("m/{name}"),
            0o644,
            fs::read(m).ctx("reading a module", m)?,
        );
        names.push(name);
    }
    archive.add_file("init", 0o755, raw_init_script(&names).into_bytes());
    // For the part onto the disk: busybox's mke2fs makes no journal.
    add_with_libraries(&mut archive, Path::new("/sbin/mke2fs"))?;
    let initrd = lab.dir().join("raw-probe.cpio");
    fs::write(&initrd, archive.to_bytes()).ctx("writing the raw-copy initramfs", &initrd)?;

    // The same bytes rsync copies: the published serial's tree.
    let root = fs::canonicalize(lab.state_dir().join("images/default/published"))
        .ctx("finding the published image", lab.state_dir())?
        .join("root");
    let tar = lab.dir().join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    let bytes = fs::metadata(&tar).ctx("reading the tar size", &tar)?.len();
    let addr = std::net::SocketAddr::from((SERVER_ADDR, 9000));
    let listener: TcpListener = lab
        .netns()
        .run_in(move || TcpListener::bind(addr))?
        .ctx("listening for the raw copy", &tar)?;
    let tar2 = tar.clone();
    std::thread::spawn(move || {
        // Once into /dev/null, once onto the disk.
        for _ in 0..2 {
            if let Ok((s, _)) = listener.accept() {
                let _ = serve_file(s, &tar2);
            }
        }
    });

    let node = &mut lab.nodes_mut()[0];
    node.power_off()?;
    node.set_extra_args(vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        "console=ttyS0 quiet panic=-1".into(),
    ]);
    let mark = node.console_mark();
    node.start()?;
    let done = Pattern::regex(r"rollout-raw-disk: t0=[0-9.]+ t1=[0-9.]+ rc=[0-9]+")?;
    let res = node.wait_for_console_after(mark, &done, Duration::from_secs(600));
    node.set_extra_args(Vec::new());
    res?;
    let text = crate::console::read_from(&node.console_log(), mark);
    let _ = fs::remove_file(&tar);
    let timed = |label: &str| -> Option<f64> {
        let re = regex::Regex::new(&format!(r"{label}: t0=([0-9.]+) t1=([0-9.]+) rc=0")).ok()?;
        let c = re.captures(&text)?;
        let (t0, t1): (f64, f64) = (c[1].parse().ok()?, c[2].parse().ok()?);
        Some((t1 - t0).max(0.01))
    };
    let seconds = timed("rollout-raw").ok_or_else(|| Error::Command {
        cmd: "the raw copy in node1's VM".into(),
        status: "no successful rollout-raw line".into(),
        stderr: text.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
    })?;
    Ok(RawCopy {
        bytes,
        seconds,
        disk_seconds: timed("rollout-raw-disk"),
    })
}

fn serve_file(s: std::net::TcpStream, path: &Path) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    while r.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut w = s;
    write!(
        w,
        "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/x-tar\r\n\r\n"
    )?;
    std::io::copy(&mut f, &mut w)?;
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The report: one block per concurrency level (mean and max per stage over
/// its nodes), then the copy stage against the raw lower bound.
pub fn render(rounds: &[Round], raw: Option<RawCopy>) -> String {
    let mut out = String::new();
    for r in rounds {
        out.push_str(&format!(
            "\n{} node(s) at once ({}):\n{:<22} {:>9} {:>9}\n",
            r.nodes.len(),
            r.nodes
                .iter()
                .map(|n| format!("{} {}", n.name, n.firmware))
                .collect::<Vec<_>>()
                .join(", "),
            "stage",
            "mean (s)",
            "max (s)"
        ));
        let mut rows: Vec<(&str, Vec<f64>)> = STAGES
            .iter()
            .map(|(label, from, to)| {
                let v = r
                    .nodes
                    .iter()
                    .filter_map(|n| n.stage(*from, *to))
                    .map(|d| d.as_secs_f64())
                    .collect();
                (*label, v)
            })
            .collect();
        let totals = r
            .nodes
            .iter()
            .filter_map(|n| n.at.get(&crate::progress::Milestone::Booted))
            .map(|d| d.as_secs_f64())
            .collect();
        rows.push(("TOTAL power-on→home", totals));
        for (label, v) in rows {
            let (mean, max) = if v.is_empty() {
                (None, None)
            } else {
                let m = v.iter().sum::<f64>() / v.len() as f64;
                let x = v.iter().cloned().fold(0.0, f64::max);
                (Some(m), Some(x))
            };
            out.push_str(&format!(
                "{:<22} {:>9} {:>9}\n",
                label,
                secs(mean.map(Duration::from_secs_f64)),
                secs(max.map(Duration::from_secs_f64))
            ));
        }
        let seen: u64 = r.nodes.iter().map(|n| n.bytes).max().unwrap_or(0);
        out.push_str(&format!(
            "bytes copied per node: {:.1} MiB (image tree; largest count the server reported: {:.1} MiB)\n",
            mib(r.image_bytes),
            mib(seen)
        ));
        if let Some(raw) = raw {
            let copy: Vec<f64> = r
                .nodes
                .iter()
                .filter_map(|n| {
                    n.stage(
                        Some(crate::progress::Milestone::Copy),
                        crate::progress::Milestone::Configure,
                    )
                })
                .map(|d| d.as_secs_f64())
                .collect();
            if !copy.is_empty() {
                let mean = copy.iter().sum::<f64>() / copy.len() as f64;
                out.push_str(&format!(
                    "copy stage / raw lower bound: {:.1} s / {:.1} s = {:.1}x\n",
                    mean,
                    raw.seconds,
                    mean / raw.seconds
                ));
                if let Some(d) = raw.disk_seconds {
                    out.push_str(&format!(
                        "copy stage / raw onto the disk: {:.1} s / {:.1} s = {:.1}x\n",
                        mean,
                        d,
                        mean / d
                    ));
                }
            }
        }
    }
    match raw {
        Some(raw) => out.push_str(&format!(
            "\nraw lower bound: the image as one tar stream ({:.1} MiB) over the same lab bridge\n\
             into node1's VM (same QEMU machine, NIC and accelerator), busybox wget to /dev/null,\n\
             timed in the guest: {:.1} s ({:.1} MiB/s). It has no per-file round trips, checksums\n\
             or disk writes, which the copy stage (rsync onto ext3 on virtio-blk) has. Stage times\n\
             come from polling the server's node record and the serial console every 0.5 s.\n",
            mib(raw.bytes),
            raw.seconds,
            mib(raw.bytes) / raw.seconds
        )),
        None => out.push_str("\nraw lower bound: not measured (see the error above)\n"),
    }
    match raw.map(|r| (r.bytes, r.disk_seconds)) {
        Some((bytes, Some(d))) => out.push_str(&format!(
            "raw onto the disk: the same stream unpacked by busybox tar onto a fresh ext3 on\n\
             node1's virtio disk, timed the same way: {:.1} s ({:.1} MiB/s).\n",
            d,
            mib(bytes) / d
        )),
        Some((_, None)) => out.push_str(
            "raw onto the disk: not measured (mke2fs, mount or tar failed in the probe)\n",
        ),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_probe_times_the_transfer_in_the_guest() {
        let s = raw_init_script(&["virtio.ko".into(), "virtio_net.ko".into()]);
        assert!(s.contains("insmod /m/virtio.ko\ninsmod /m/virtio_net.ko"));
        assert!(s.contains("wget -q -O /dev/null http://10.44.0.1:9000/image.tar"));
        assert!(s.contains("rollout-raw: t0=$t0 t1=$t1"));
        // Then the same stream onto a fresh ext3, always answered.
        assert!(s.contains("/sbin/mke2fs -q -t ext3 -F /dev/vda"), "{s}");
        assert!(s.contains("| tar -x -C /mnt"), "{s}");
        assert!(s.contains("rollout-raw-disk: t0=$t2 t1=$t3 rc=$rc"), "{s}");
    }

    #[test]
    fn render_names_every_stage_and_the_ratio() {
        let out = render(
            &[Round {
                nodes: Vec::new(),
                image_bytes: 0,
            }],
            Some(RawCopy {
                bytes: 100 << 20,
                seconds: 2.0,
                disk_seconds: Some(4.0),
            }),
        );
        for (label, _, _) in STAGES {
            assert!(out.contains(label), "{label} missing:\n{out}");
        }
        assert!(out.contains("50.0 MiB/s"), "{out}");
        assert!(
            out.contains("onto a fresh ext3") && out.contains("(25.0 MiB/s)"),
            "{out}"
        );
    }
}
