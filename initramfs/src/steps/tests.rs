//! The phase sequence driven with a fake machine and a fake events endpoint:
//! order, hand-over of results, failures and panics.

use super::*;
use crate::testutil::{plan, EventSink};

/// Records each phase call and checks it got what the earlier phase returned.
struct Fake {
    disk: PathBuf,
    target: PathBuf,
    calls: Vec<&'static str>,
    fail_at: Option<&'static str>,
    panic_at: Option<&'static str>,
    /// The root is left for a block image; the value: whether writing it works.
    image_writes: Option<bool>,
}

impl Fake {
    fn new(dir: &Path) -> Self {
        let disk = dir.join("disk.img");
        // A "disk" with a recognisable table area, to see the wipe.
        std::fs::write(&disk, vec![0xa5u8; 3 * MIB as usize]).unwrap();
        let target = dir.join("target");
        std::fs::create_dir(&target).unwrap();
        Fake {
            disk,
            target,
            calls: vec![],
            fail_at: None,
            panic_at: None,
            image_writes: None,
        }
    }

    fn enter(&mut self, phase: &'static str) -> Result<(), StepError> {
        self.calls.push(phase);
        if self.panic_at == Some(phase) {
            panic!("fake {phase} exploded");
        }
        match self.fail_at {
            Some(p) if p == phase => Err(StepError::Other(format!("fake {phase} failed"))),
            _ => Ok(()),
        }
    }

    fn wiped(&self) -> bool {
        let b = std::fs::read(&self.disk).unwrap();
        b[..MIB as usize].iter().all(|&x| x == 0)
            && b[b.len() - MIB as usize..].iter().all(|&x| x == 0)
    }

    fn part(&self, n: u32) -> partition::WrittenPart {
        partition::WrittenPart {
            path: PathBuf::from(format!("{}{n}", self.disk.display())),
            guid: uuid::Uuid::from_u128(n as u128),
        }
    }
}

impl Machine for Fake {
    fn choose_disk(&mut self, plan: &InstallPlan) -> StepResult<ChosenDisk> {
        self.enter("choose_disk")?;
        let size = 8 * 1024 * MIB;
        let geometry = layout::DiskGeometry {
            bytes: size,
            sector: 512,
        };
        let planned = layout::plan(&plan.layout, Firmware::Bios, &[geometry])?;
        let disk = disk::DiskInfo {
            name: "disk.img".into(),
            dev: self.disk.clone(),
            size_bytes: size,
            logical_sector: 512,
            removable: false,
        };
        Ok((
            ChosenDisk {
                disks: vec![disk],
                plan: planned,
            },
            "chosen".into(),
        ))
    }
    fn previous_identity(
        &mut self,
        _: &InstallPlan,
        disk: &ChosenDisk,
    ) -> (Option<Identity>, String) {
        self.calls.push("previous_identity");
        assert_eq!(disk.first().dev, self.disk);
        (Some(old_identity()), "identity: kept".into())
    }
    fn partition(&mut self, _: &InstallPlan, disk: &ChosenDisk) -> StepResult<Partitioned> {
        self.enter("partition")?;
        assert_eq!(disk.first().dev, self.disk);
        let written = (1..=disk.plan.disks[0].parts.len() as u32)
            .map(|n| self.part(n))
            .collect();
        let parts = Partitioned {
            disks: vec![written],
            arrays: vec![],
            volumes: vec![],
        };
        Ok((parts, "partitioned".into()))
    }
    fn format(
        &mut self,
        _: &InstallPlan,
        disk: &ChosenDisk,
        parts: &Partitioned,
    ) -> StepResult<Formatted> {
        self.enter("format")?;
        let made: Vec<Made> = disk
            .plan
            .targets
            .iter()
            .map(|t| {
                let device = parts.device(&disk.plan, t.source)?;
                let uuid = format!("uuid-of-{}", device.display());
                Ok(Made { device, uuid })
            })
            .collect::<Result<_, StepError>>()?;
        let root = storage::root_spec(&disk.plan, &made)?;
        let image_root = self.image_writes.map(|_| ImageRoot {
            device: made[0].device.clone(),
            fs: wire::Fs::Ext3,
            label: "rollout-root".into(),
            uuid: made[0].uuid.clone(),
        });
        Ok((
            Formatted {
                made,
                root,
                image_root,
            },
            "formatted".into(),
        ))
    }
    fn mount_root(
        &mut self,
        _: &InstallPlan,
        _: &ChosenDisk,
        _: &Formatted,
    ) -> StepResult<MountedRoot> {
        self.enter("mount")?;
        let mount = sys::Mounted::assume(&self.target);
        let root = MountedRoot {
            children: sys::Mounts::default(),
            mount,
            teardown: Teardown::default(),
        };
        Ok((root, "mounted".into()))
    }
    fn copy(&mut self, _: &mut Reporter, _: &InstallPlan, root: &MountedRoot) -> StepResult<()> {
        self.enter("copy")?;
        assert_eq!(root.at(), self.target);
        Ok(((), "copied".into()))
    }
    fn copy_image(&mut self, _: &mut Reporter, _: &InstallPlan, _: &ImageRoot) -> StepResult<bool> {
        self.enter("copy_image")?;
        let written = self.image_writes.expect("only a root left for the image");
        Ok((written, "image written".into()))
    }
    fn configure(
        &mut self,
        _: &InstallPlan,
        net: &Network,
        _: &ChosenDisk,
        fs: &Formatted,
        root: MountedRoot,
        identity: Option<&Identity>,
    ) -> StepResult<Configured> {
        self.enter("configure")?;
        assert_eq!(net.iface, "eth7");
        // The root filesystem is on partition 2, after the BIOS boot partition.
        assert!(fs.root.starts_with("UUID=uuid-of-"), "{}", fs.root);
        assert!(fs.root.ends_with("disk.img2"), "{}", fs.root);
        // What was read before partitioning arrives here, and its public keys
        // are what the installed report carries.
        let host_keys = identity
            .map(|i| i.host_keys.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|k| k.name.ends_with(".pub"))
            .map(|k| String::from_utf8_lossy(&k.contents).trim().to_string())
            .collect();
        Ok((Configured { root, host_keys }, "configured".into()))
    }
    fn bootloader(
        &mut self,
        _: &InstallPlan,
        _: &ChosenDisk,
        _: &Partitioned,
        _: &Formatted,
        root: &Configured,
    ) -> StepResult<()> {
        self.enter("bootloader")?;
        assert_eq!(root.at(), self.target);
        Ok(((), "bootloader installed".into()))
    }
    fn unmount(&mut self, root: Configured) -> Vec<String> {
        self.calls.push("unmount");
        root.root.mount.unmount()
    }
}

fn old_identity() -> Identity {
    Identity {
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        host_keys: vec![identity::KeyFile {
            name: "ssh_host_ed25519_key.pub".into(),
            contents: b"ssh-ed25519 AAAAOLD root@node1\n".to_vec(),
            mode: 0o644,
        }],
    }
}

fn network() -> Network {
    Network {
        iface: "eth7".into(),
        addr: Ipv4Addr::new(10, 44, 0, 50),
        server: "http://10.44.0.1:8080".into(),
        mac: "52:54:00:00:00:01".into(),
        boot_secret: None,
    }
}

/// A run reporting to `sink` for the fixture plan.
fn run_for(sink: &EventSink) -> Run {
    let mut run = Run::new(Reporter::new(&sink.url, Instant::now()));
    run.set_plan(&plan());
    run
}

/// A scratch directory (disk image, target), an events endpoint, a run
/// reporting to it and a fake machine.
fn case() -> (tempfile::TempDir, EventSink, Run, Fake) {
    let dir = tempfile::tempdir().unwrap();
    let sink = EventSink::start();
    let run = run_for(&sink);
    let fake = Fake::new(dir.path());
    (dir, sink, run, fake)
}

/// The last event posted, which must be `step`'s failure: its error and console tail.
fn reported_failure(sink: &EventSink, step: Step) -> (String, Vec<String>) {
    let last = sink.take().pop().unwrap();
    assert_eq!(last.step, step);
    match last.kind {
        EventKind::Failed {
            error,
            console_tail,
        } => (error, console_tail),
        other => panic!("not a failure: {other:?}"),
    }
}

fn install_with(fake: &mut Fake, run: &mut Run) -> Result<(), Failure> {
    run.guarded(|run| install(run, fake, &network(), &plan()))
}

#[test]
fn phases_run_in_wire_order_and_hand_their_results_on() {
    let (_dir, sink, mut run, mut fake) = case();
    install_with(&mut fake, &mut run).unwrap();
    assert_eq!(
        fake.calls,
        [
            "choose_disk",
            "previous_identity",
            "partition",
            "format",
            "mount",
            "copy",
            "configure",
            "bootloader",
            "unmount"
        ]
    );
    let events = sink.take();
    let mut want = vec![];
    for step in &Step::ALL[5..12] {
        want.push((*step, EventKind::Started));
        want.push((*step, EventKind::Done));
    }
    want.push((Step::Finish, EventKind::Started));
    want.push((
        Step::Finish,
        EventKind::Installed {
            serial: 7,
            host_keys: vec!["ssh-ed25519 AAAAOLD root@node1".into()],
        },
    ));
    let got: Vec<_> = events.iter().map(|e| (e.step, e.kind.clone())).collect();
    assert_eq!(got, want);
    assert_eq!(events[1].message, "choose_disk: chosen");
    assert!(!fake.wiped(), "a complete install is not wiped");
    // A later failure (the Installed report is out) must not wipe the disk.
    run.fail(&Failure {
        step: Step::Finish,
        error: StepError::Other("after the end".into()),
    });
    assert!(!fake.wiped());
}

/// A block image fills the root before the mount, and no rsync copy
/// follows; one that could not be written leaves a formatted root that the
/// rsync copy fills after the mount. Either way one install, one Installed.
#[test]
fn a_block_image_is_the_copy_before_the_mount_and_rsync_follows_only_its_failure() {
    for (writes, middle) in [
        (true, &["format", "copy_image", "mount", "configure"][..]),
        (
            false,
            &["format", "copy_image", "mount", "copy", "configure"][..],
        ),
    ] {
        let (_dir, sink, mut run, mut fake) = case();
        fake.image_writes = Some(writes);
        install_with(&mut fake, &mut run).unwrap();
        let at = fake.calls.iter().position(|c| *c == "format").unwrap();
        assert_eq!(&fake.calls[at..at + middle.len()], middle, "{writes}");
        let steps: Vec<Step> = sink
            .take()
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .map(|e| e.step)
            .collect();
        let copies = steps.iter().filter(|s| **s == Step::Copy).count();
        assert_eq!(copies, if writes { 1 } else { 2 }, "{steps:?}");
        assert_eq!(steps.last(), Some(&Step::Finish));
    }
}

#[test]
fn keep_identity_off_never_reads_the_old_disk() {
    let (_dir, sink, mut run, mut fake) = case();
    let mut p = plan();
    p.keep_identity = false;
    run.guarded(|run| install(run, &mut fake, &network(), &p))
        .unwrap();
    assert!(
        !fake.calls.contains(&"previous_identity"),
        "{:?}",
        fake.calls
    );
    let last = sink.take().pop().unwrap();
    assert_eq!(
        last.kind,
        EventKind::Installed {
            serial: 7,
            host_keys: vec![]
        }
    );
}

#[test]
fn a_failed_step_stops_the_sequence_is_reported_and_wipes_the_disk() {
    let (_dir, sink, mut run, mut fake) = case();
    fake.fail_at = Some("format");
    let f = install_with(&mut fake, &mut run).unwrap_err();
    assert_eq!(f.step, Step::Format);
    assert_eq!(
        fake.calls,
        ["choose_disk", "previous_identity", "partition", "format"]
    );
    assert!(!fake.wiped(), "the wipe is the failure path's job");
    run.fail(&f);
    assert!(fake.wiped());
    let (error, console_tail) = reported_failure(&sink, Step::Format);
    assert_eq!(error, "fake format failed");
    assert!(console_tail
        .iter()
        .any(|l| l.ends_with("format: FAILED: fake format failed")));
}

#[test]
fn a_panicking_step_is_reported_as_its_failure_and_wipes_the_disk() {
    crate::crash::install_hook();
    let (_dir, sink, mut run, mut fake) = case();
    fake.panic_at = Some("copy");
    let f = install_with(&mut fake, &mut run).unwrap_err();
    assert_eq!(f.step, Step::Copy);
    assert!(
        matches!(&f.error, StepError::Panic(m) if m.starts_with("fake copy exploded at ") && m.contains("tests.rs:")),
        "{:?}",
        f.error
    );
    assert_eq!(
        fake.calls,
        [
            "choose_disk",
            "previous_identity",
            "partition",
            "format",
            "mount",
            "copy"
        ]
    );
    run.fail(&f);
    assert!(fake.wiped());
    let (error, console_tail) = reported_failure(&sink, Step::Copy);
    assert!(
        error.contains("internal error (panic): fake copy exploded"),
        "{error}"
    );
    assert!(console_tail
        .iter()
        .any(|l| l.contains("internal error: ") && l.contains("fake copy exploded")));
}

#[test]
fn a_panic_before_partitioning_leaves_the_disk_alone() {
    let (_dir, sink, mut run, mut fake) = case();
    fake.panic_at = Some("choose_disk");
    let f = install_with(&mut fake, &mut run).unwrap_err();
    assert_eq!(f.step, Step::ChooseDisk);
    run.fail(&f);
    assert!(!fake.wiped());
    let (error, _) = reported_failure(&sink, Step::ChooseDisk);
    assert!(error.contains("fake choose_disk exploded"), "{error}");
}

#[test]
fn urls_and_firmware_choice() {
    assert_eq!(
        plan_url("http://10.44.0.1:8080", "52:54:00:00:00:01"),
        "http://10.44.0.1:8080/api/v1/plan/52:54:00:00:00:01"
    );
    assert_eq!(
        firmware_for(Bootloader::Auto, Firmware::Uefi),
        Firmware::Uefi
    );
    assert_eq!(
        firmware_for(Bootloader::Extlinux, Firmware::Uefi),
        Firmware::Bios
    );
    assert_eq!(
        firmware_for(Bootloader::Uefi, Firmware::Bios),
        Firmware::Uefi
    );
}

/// The copy step with the real rsync from a local tree: the files the plan
/// lists as sparse keep their holes, and the rest is written as it is (zeros
/// a file really holds stay on the disk) unless the plan cannot list them.
#[test]
fn copy_keeps_listed_holes_and_writes_the_rest_densely() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    if !testkit::prereq::require_file(crate::paths::RSYNC, "rsync") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("var/log")).unwrap();
    let lastlog = std::fs::File::create(src.path().join("var/log/lastlog")).unwrap();
    lastlog.set_len(64 * MIB).unwrap();
    lastlog.write_all_at(b"last entry", 64 * MIB - 10).unwrap();
    std::fs::write(src.path().join("zeros"), vec![0u8; 4 * MIB as usize]).unwrap();
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;

    for listed in [true, false] {
        let dst = tempfile::tempdir().unwrap();
        let mut p = plan();
        p.image.rsync_url = format!("{}/", src.path().display());
        p.image.sparse_files = listed.then(|| vec!["/var/log/lastlog".to_string()]);
        let mut reporter = Reporter::new("", Instant::now());
        copy_into(&mut reporter, &p, dst.path()).unwrap();

        let copied = dst.path().join("var/log/lastlog");
        assert_eq!(std::fs::metadata(&copied).unwrap().len(), 64 * MIB);
        let mut tail = [0u8; 10];
        std::fs::File::open(&copied)
            .unwrap()
            .read_exact_at(&mut tail, 64 * MIB - 10)
            .unwrap();
        assert_eq!(&tail, b"last entry");
        assert!(
            allocated(&copied) < MIB,
            "listed={listed}: lastlog's holes were filled"
        );
        let zeros = dst.path().join("zeros");
        assert_eq!(std::fs::read(&zeros).unwrap(), vec![0u8; 4 * MIB as usize]);
        if listed {
            assert!(
                allocated(&zeros) >= 4 * MIB,
                "the dense copy ran with --sparse: {} bytes allocated",
                allocated(&zeros)
            );
        } else {
            assert!(
                allocated(&zeros) < MIB,
                "without a list the whole copy must keep holes"
            );
        }
    }
}
