//! From a plan to a mounted root: the disk, its partitions and filesystems.

use super::*;

impl Installer {
    pub(super) fn choose_disk(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let fw = firmware_for(plan.bootloader, detect_firmware());
        let need = layout::required_bytes(fw, &plan.layout);
        let sys_block = Path::new("/sys/block");
        // Storage drivers probe asynchronously after loading.
        let deadline = Instant::now() + Duration::from_secs(15);
        let disks = loop {
            let disks = disk::list(sys_block);
            let ready = match &plan.disk.path {
                Some(p) => disks.iter().any(|d| d.dev == Path::new(p)),
                None => disks.iter().any(|d| !d.removable && d.size_bytes >= need),
            };
            if ready || Instant::now() > deadline {
                break disks;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let d = disk::choose(&disks, plan.disk.path.as_deref(), need)?;
        let l = layout::plan(d.size_bytes, d.logical_sector, fw, &plan.layout)?;
        let msg = format!(
            "{} {} MiB, {}-byte sectors, {} boot",
            d.dev.display(),
            d.size_bytes / MIB,
            d.logical_sector,
            fw.as_str()
        );
        self.disk = Some(d);
        self.layout = Some(l);
        Ok(((), msg))
    }

    pub(super) fn partition(&mut self) -> Result<((), String), StepError> {
        let d = self.disk.clone().expect("disk chosen");
        let l = self.layout.clone().expect("layout planned");
        self.wipe_on_failure = Some(d.dev.clone());
        let written = partition::write_table_parts(&d.dev, &l)?;
        for (p, w) in l.parts.iter().zip(written) {
            self.parts.insert(p.kind, w.path);
            self.part_guids.insert(p.kind, w.guid);
        }
        Ok(((), format!("{} {}", d.dev.display(), l.describe())))
    }

    pub(super) fn format(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let l = self.layout.clone().expect("layout planned");
        let root = self.parts[&PartKind::Root].clone();
        format::mke2fs(plan.layout.root_fs, &plan.layout.root_label, &root)?;
        let root_uuid = format::uuid_string(format::read_ext_uuid(&root)?);
        let mut msg = format!(
            "root {} {} label {} UUID {root_uuid}",
            root.display(),
            plan.layout.root_fs.as_str(),
            plan.layout.root_label
        );
        if let (Some(dev), Some(part)) = (self.parts.get(&PartKind::Swap), l.part(PartKind::Swap)) {
            let uuid = *uuid::Uuid::new_v4().as_bytes();
            swap::write(dev, part.lba_count * l.sector_size, uuid, "rollout-swap")?;
            let s = format::uuid_string(uuid);
            msg.push_str(&format!(", swap {} UUID {s}", dev.display()));
            self.swap_uuid = Some(s);
        }
        if let Some(esp) = self.parts.get(&PartKind::Esp) {
            format::mkfs_fat("ESP", esp)?;
            msg.push_str(&format!(", esp {} vfat", esp.display()));
        }
        self.root_uuid = Some(root_uuid);
        Ok(((), msg))
    }

    pub(super) fn mount_root(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let root = self.parts[&PartKind::Root].clone();
        let target = Path::new(paths::TARGET);
        let fs = plan.layout.root_fs.as_str();
        let dev = root.to_string_lossy().to_string();
        // The ext4 driver serves ext3 too; some kernels register no "ext3" type.
        let used = match sys::mount(&dev, target, fs, MsFlags::empty(), None) {
            Ok(()) => fs,
            Err(_) => {
                sys::mount(&dev, target, "ext4", MsFlags::empty(), None)?;
                "ext4"
            }
        };
        Ok(((), format!("{dev} on {} ({used})", target.display())))
    }
}
