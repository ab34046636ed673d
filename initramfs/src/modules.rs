//! Loading kernel modules without kmod or udev: the fixed must-have list by
//! name, then what each device in /sys asks for through its `modalias`, matched
//! against the shipped `modules.alias` as modprobe would; dependencies (hard and
//! soft) from `modules.dep`/`modules.softdep`, then `finit_module(2)` in order.
//! The tables and the order are `rollout::kernel::{alias, deps}`, pure and shared
//! with the builder; this file is the part that touches /sys and the kernel.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cmdline::ModuleOptions;
use rollout::kernel::alias::{self, AliasTable, Claim, Device};
use rollout::kernel::deps::{resolve, ModulesDep, Tables};
use rollout::kernel::SoftDeps;
// Names and table parsing are shared with the server's initramfs builder.
pub use rollout::kernel::{module_name, normalize_module_name, parse_builtin};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}: {source}; the initramfs must contain the kernel's modules")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The modules directory of the running kernel.
pub fn modules_dir(root: &Path) -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let dir = root.join(&release);
    if !release.is_empty() && dir.join("modules.dep").exists() {
        return dir;
    }
    // A builder packing another kernel's version string still works if there is
    // exactly one modules tree.
    std::fs::read_dir(root)
        .ok()
        .and_then(|rd| {
            let dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            (dirs.len() == 1).then(|| dirs[0].clone())
        })
        .unwrap_or(dir)
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub already: Vec<String>,
    pub builtin: Vec<String>,
    /// Modules (or dependencies) whose files are not in the initramfs.
    pub missing: Vec<String>,
    /// Human-readable notes for modules that failed to load.
    pub notes: Vec<String>,
    /// `module param=value ...` for each module loaded with parameters from the
    /// kernel command line.
    pub with_params: Vec<String>,
    /// Devices' modules left unloaded for `modprobe.blacklist`, a line each.
    pub blacklisted: Vec<String>,
}

impl LoadReport {
    /// Adds a later pass's report to this one.
    pub fn merge(&mut self, other: LoadReport) {
        self.loaded.extend(other.loaded);
        self.already.extend(other.already);
        self.builtin.extend(other.builtin);
        self.missing.extend(other.missing);
        self.notes.extend(other.notes);
        self.with_params.extend(other.with_params);
        self.blacklisted.extend(other.blacklisted);
    }
}

/// A device that asked for a module, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLoad {
    pub claim: Claim,
    /// The driver bound to the device after loading (its `driver` link), if any.
    pub bound: Option<String>,
}

impl DeviceLoad {
    /// The console line: which driver took which device, and by which modalias.
    pub fn describe(&self) -> String {
        let c = &self.claim;
        match &self.bound {
            Some(d) if *d == c.module => {
                format!("driver {d} claimed device {} ({})", c.device, c.modalias)
            }
            Some(d) => format!(
                "driver {d} claimed device {} ({}) after module {} loaded",
                c.device, c.modalias, c.module
            ),
            None => format!(
                "module {} loaded for device {} ({}), but no driver is bound to it",
                c.module, c.device, c.modalias
            ),
        }
    }
}

/// The shipped tables and what was asked of the kernel so far.
pub struct Loader {
    dir: PathBuf,
    dep: ModulesDep,
    builtin: HashSet<String>,
    softdeps: HashMap<String, SoftDeps>,
    exact: HashMap<String, Vec<String>>,
    aliases: AliasTable,
    /// Parameters and the blacklist from the kernel command line.
    options: ModuleOptions,
    /// Blacklisted modules a device asked for, each noted once.
    refused: HashSet<String>,
    /// Modules loaded, found loaded, or failed: never asked for twice.
    tried: HashSet<String>,
}

fn read(path: &Path) -> Result<String, ModuleError> {
    std::fs::read_to_string(path).map_err(|source| ModuleError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Loader {
    /// Reads `modules.dep` (required) and the alias, softdep and builtin tables;
    /// `options` give modules their parameters and keep blacklisted ones from
    /// loading for devices.
    pub fn open(dir: &Path, options: ModuleOptions) -> Result<Self, ModuleError> {
        let dep = ModulesDep::parse(&read(&dir.join("modules.dep"))?);
        let opt = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let alias_text = opt("modules.alias");
        Ok(Loader {
            dir: dir.to_path_buf(),
            dep,
            builtin: parse_builtin(&opt("modules.builtin")),
            softdeps: rollout::kernel::parse_softdeps(&opt("modules.softdep")),
            exact: rollout::kernel::parse_exact_aliases(&alias_text),
            aliases: AliasTable::parse(&alias_text),
            options,
            refused: HashSet::new(),
            tried: HashSet::new(),
        })
    }

    /// Loads `wanted` by name, dependencies first. Individual failures are
    /// notes, not errors: a missing driver shows up later as "no NIC".
    pub fn load_names(&mut self, wanted: &[&str]) -> LoadReport {
        let tables = Tables {
            dep: &self.dep,
            builtin: &self.builtin,
            softdeps: &self.softdeps,
            aliases: &self.exact,
        };
        let res = resolve(&tables, wanted);
        let mut report = LoadReport {
            builtin: res.builtin,
            ..LoadReport::default()
        };
        for m in res.missing {
            report
                .notes
                .push(format!("{m}: not in modules.dep, skipped"));
        }
        for path in res.load_order {
            self.insmod(&path, &mut report);
        }
        report
    }

    /// One pass over `sys_bus` (/sys/bus): every device without a driver whose
    /// modalias matches a module not tried yet gets that module loaded.
    pub fn load_for_devices(&mut self, sys_bus: &Path) -> (Vec<DeviceLoad>, LoadReport) {
        let devices = unclaimed_devices(sys_bus);
        let mut report = LoadReport::default();
        let (refused, claims): (Vec<Claim>, Vec<Claim>) =
            alias::claims(&self.aliases, &devices, &self.tried)
                .into_iter()
                .partition(|c| self.options.blacklist.contains(&c.module));
        for c in refused {
            if self.refused.insert(c.module.clone()) {
                report.blacklisted.push(format!(
                    "{} not loaded for device {} ({}): modprobe.blacklist on the kernel command line",
                    c.module, c.device, c.modalias
                ));
            }
        }
        if claims.is_empty() {
            return (Vec::new(), report);
        }
        let names: Vec<&str> = claims.iter().map(|c| c.module.as_str()).collect();
        report.merge(self.load_names(&names));
        // Modules named by a claim count as tried even when they failed.
        self.tried.extend(names.iter().map(|n| n.to_string()));
        let loads = claims
            .into_iter()
            .map(|claim| {
                let (bus, dev) = claim.device.split_once('/').unwrap_or(("", ""));
                let bound = bound_driver(&sys_bus.join(bus).join("devices").join(dev));
                DeviceLoad { claim, bound }
            })
            .collect();
        (loads, report)
    }

    fn insmod(&mut self, rel: &str, report: &mut LoadReport) {
        let name = module_name(rel);
        if !self.tried.insert(name.clone()) {
            return;
        }
        let mut path = self.dir.join(rel);
        let mut flags = nix::kmod::ModuleInitFlags::empty();
        if !path.exists() {
            // The builder decompresses modules; a table naming `.ko.xz` still works.
            let plain = self.dir.join(rollout::kernel::plain_ko_path(rel));
            if plain.exists() {
                path = plain;
            } else {
                report.missing.push(name);
                return;
            }
        } else if !rel.ends_with(".ko") {
            // Compressed: the kernel decompresses it if built with MODULE_DECOMPRESS.
            flags = nix::kmod::ModuleInitFlags::from_bits_retain(4);
        }
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                report
                    .notes
                    .push(format!("{name}: open {}: {e}", path.display()));
                return;
            }
        };
        let params = self
            .options
            .params
            .get(&name)
            .map(String::as_str)
            .unwrap_or("");
        // The command line cannot hold a NUL, so this never falls back.
        let args = CString::new(params).unwrap_or_default();
        match nix::kmod::finit_module(&file, &args, flags) {
            Ok(()) => {
                if !params.is_empty() {
                    report.with_params.push(format!("{name} {params}"));
                }
                report.loaded.push(name)
            }
            Err(nix::errno::Errno::EEXIST) => report.already.push(name),
            Err(e) if !params.is_empty() => report.notes.push(format!(
                "{name}: finit_module with {params:?} from the kernel command line: {e} \
                 (is each parameter one the module has? see `modinfo -p {name}`)"
            )),
            // ENODEV: the module found no device it drives (a second driver
            // that matched the same alias, say); not worth more than a note.
            Err(e) => report.notes.push(format!("{name}: finit_module: {e}")),
        }
    }
}

/// Devices under `sys_bus/*/devices/` that have a modalias and no driver yet,
/// as `bus/device`, sorted (so the load order is the same at every boot).
pub fn unclaimed_devices(sys_bus: &Path) -> Vec<Device> {
    let mut out = Vec::new();
    for bus in sorted_names(sys_bus) {
        let devs = sys_bus.join(&bus).join("devices");
        for dev in sorted_names(&devs) {
            let at = devs.join(&dev);
            if bound_driver(&at).is_some() {
                continue;
            }
            let Ok(modalias) = std::fs::read_to_string(at.join("modalias")) else {
                continue;
            };
            let modalias = modalias.trim();
            if !modalias.is_empty() {
                out.push(Device {
                    name: format!("{bus}/{dev}"),
                    modalias: modalias.to_string(),
                });
            }
        }
    }
    out
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The name of the driver bound to the device at `dev` (its `driver` symlink).
pub fn bound_driver(dev: &Path) -> Option<String> {
    let target = std::fs::read_link(dev.join("driver")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The installer's one loader, opened by the `load_modules` step and asked
/// again while later steps wait for a NIC or a disk (devices behind a freshly
/// loaded controller, such as SCSI disks, appear only then).
static LOADER: Mutex<Option<Loader>> = Mutex::new(None);

/// Opens the tables in `dir` and loads `fixed` by name (replacing an earlier
/// loader); every module it loads gets its parameters from /proc/cmdline.
pub fn start(dir: &Path, fixed: &[&str]) -> Result<LoadReport, ModuleError> {
    let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut loader = Loader::open(dir, crate::cmdline::module_options(&line))?;
    let report = loader.load_names(fixed);
    *LOADER.lock().unwrap_or_else(|p| p.into_inner()) = Some(loader);
    Ok(report)
}

/// One modalias pass with the loader [`start`] opened; nothing before it.
pub fn rescan(sys_bus: &Path) -> (Vec<DeviceLoad>, LoadReport) {
    match LOADER.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(l) => l.load_for_devices(sys_bus),
        None => (Vec::new(), LoadReport::default()),
    }
}

/// Loads modules by name with the started loader (`8021q`, `bonding`: what a
/// network plan needs and no device asks for).
pub fn load_by_name(names: &[&str]) -> LoadReport {
    match LOADER.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(l) => l.load_names(names),
        None => LoadReport::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/modules.dep");

    fn loader(dir: &Path, dep: &str, alias: &str) -> Loader {
        loader_with(dir, dep, alias, ModuleOptions::default())
    }

    fn loader_with(dir: &Path, dep: &str, alias: &str, options: ModuleOptions) -> Loader {
        std::fs::write(dir.join("modules.dep"), dep).unwrap();
        std::fs::write(dir.join("modules.alias"), alias).unwrap();
        Loader::open(dir, options).unwrap()
    }

    const VMXNET3_MODALIAS: &str = "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00";

    /// A fake /sys/bus at `bus` with one driverless vmxnet3 NIC.
    fn vmxnet3_bus(bus: &Path) {
        sys_bus(bus, &[("pci", "0000:00:05.0", VMXNET3_MODALIAS, None)]);
    }

    /// A fake /sys/bus: (bus, device, modalias, bound driver).
    fn sys_bus(root: &Path, devices: &[(&str, &str, &str, Option<&str>)]) {
        for (bus, dev, modalias, driver) in devices {
            let at = root.join(bus).join("devices").join(dev);
            std::fs::create_dir_all(&at).unwrap();
            std::fs::write(at.join("modalias"), format!("{modalias}\n")).unwrap();
            if let Some(d) = driver {
                let drv = root.join(bus).join("drivers").join(d);
                std::fs::create_dir_all(&drv).unwrap();
                std::os::unix::fs::symlink(&drv, at.join("driver")).unwrap();
            }
        }
    }

    #[test]
    fn unclaimed_devices_are_sorted_and_skip_bound_ones() {
        let tmp = tempfile::tempdir().unwrap();
        sys_bus(
            tmp.path(),
            &[
                ("virtio", "virtio0", "virtio:d00000001v00001AF4", None),
                (
                    "pci",
                    "0000:00:03.0",
                    "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00",
                    Some("virtio-pci"),
                ),
                (
                    "pci",
                    "0000:00:05.0",
                    "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00",
                    None,
                ),
                (
                    "pci",
                    "0000:00:04.0",
                    "pci:v00001000d000000E7sv00001000sd00000001bc01sc07i00",
                    None,
                ),
            ],
        );
        let d = unclaimed_devices(tmp.path());
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["pci/0000:00:04.0", "pci/0000:00:05.0", "virtio/virtio0"]
        );
        assert_eq!(
            bound_driver(&tmp.path().join("pci/devices/0000:00:03.0")).as_deref(),
            Some("virtio-pci")
        );
    }

    #[test]
    fn command_line_parameters_go_to_their_module_and_a_refusal_names_them() {
        // finit_module refuses this file (not a module, or no privilege): the
        // note names the parameters it was given and where they came from.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("kernel/nvme")).unwrap();
        for m in ["nvme_core", "nvme"] {
            std::fs::write(tmp.path().join(format!("kernel/nvme/{m}.ko")), b"no").unwrap();
        }
        std::fs::write(
            tmp.path().join("modules.dep"),
            "kernel/nvme/nvme_core.ko:\nkernel/nvme/nvme.ko: kernel/nvme/nvme_core.ko\n",
        )
        .unwrap();
        let options = crate::cmdline::module_options("console=ttyS0 nvme_core.io_timeout=600");
        let mut l = Loader::open(tmp.path(), options).unwrap();
        let r = l.load_names(&["nvme"]);
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
        assert!(
            r.notes[0].starts_with(
                "nvme_core: finit_module with \"io_timeout=600\" from the kernel command line: "
            ),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes[1].starts_with("nvme: finit_module: "),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_blacklisted_module_is_not_loaded_for_a_device_and_is_named_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mods = tmp.path().join("mods");
        std::fs::create_dir_all(&mods).unwrap();
        let mut l = loader_with(
            &mods,
            "kernel/vmxnet3.ko:\n",
            "alias pci:v000015ADd000007B0sv*sd*bc*sc*i* vmxnet3\n",
            crate::cmdline::module_options("modprobe.blacklist=vmxnet3"),
        );
        let bus = tmp.path().join("bus");
        vmxnet3_bus(&bus);
        let (loads, report) = l.load_for_devices(&bus);
        assert!(loads.is_empty(), "{loads:?}");
        assert!(
            report.loaded.is_empty() && report.notes.is_empty(),
            "{report:?}"
        );
        assert_eq!(
            report.blacklisted,
            ["vmxnet3 not loaded for device pci/0000:00:05.0 (pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00): modprobe.blacklist on the kernel command line"]
        );
        let (_, again) = l.load_for_devices(&bus);
        assert!(again.blacklisted.is_empty(), "named once: {again:?}");
    }

    #[test]
    fn a_pass_loads_what_devices_ask_for_once_and_reports_it() {
        // Outside a real initramfs finit_module fails (no privilege, or the file
        // is not a module): the pass still records the claim and never retries it.
        let tmp = tempfile::tempdir().unwrap();
        let mods = tmp.path().join("mods");
        std::fs::create_dir_all(mods.join("kernel/drivers/net")).unwrap();
        std::fs::write(mods.join("kernel/drivers/net/vmxnet3.ko"), b"not a module").unwrap();
        let mut l = loader(
            &mods,
            "kernel/drivers/net/vmxnet3.ko:\nkernel/drivers/net/virtio_net.ko:\n",
            "alias pci:v000015ADd000007B0sv*sd*bc*sc*i* vmxnet3\nalias virtio:d00000001v* virtio_net\n",
        );
        let bus = tmp.path().join("bus");
        vmxnet3_bus(&bus);
        let (loads, report) = l.load_for_devices(&bus);
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].claim.module, "vmxnet3");
        assert_eq!(loads[0].claim.device, "pci/0000:00:05.0");
        assert_eq!(
            loads[0].describe(),
            "module vmxnet3 loaded for device pci/0000:00:05.0 (pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00), but no driver is bound to it"
        );
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with("vmxnet3: finit_module")),
            "{report:?}"
        );
        // Not asked again on the next pass.
        let (again, _) = l.load_for_devices(&bus);
        assert!(again.is_empty());
        // A device that appears later (virtio_net's file is absent: missing).
        sys_bus(
            &bus,
            &[("virtio", "virtio0", "virtio:d00000001v00001AF4", None)],
        );
        let (loads, report) = l.load_for_devices(&bus);
        assert_eq!(loads[0].claim.module, "virtio_net");
        assert_eq!(report.missing, ["virtio_net"]);
    }

    #[test]
    fn claimed_lines_name_driver_device_and_modalias() {
        let claim = Claim {
            module: "e1000e".into(),
            device: "pci/0000:00:02.0".into(),
            modalias: "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00".into(),
        };
        let bound = DeviceLoad {
            claim: claim.clone(),
            bound: Some("e1000e".into()),
        };
        assert_eq!(
            bound.describe(),
            "driver e1000e claimed device pci/0000:00:02.0 (pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00)"
        );
        let other = DeviceLoad {
            claim,
            bound: Some("e1000e-other".into()),
        };
        assert!(other.describe().ends_with("after module e1000e loaded"));
    }

    #[test]
    fn fixed_list_loads_dependencies_first_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut l = loader(tmp.path(), FIXTURE, "");
        // No module file exists here: each shows as missing, in load order, once.
        let r = l.load_names(&[
            "virtio_net",
            "sd_mod",
            "ahci",
            "ext4",
            "vfat",
            "no_such_mod",
        ]);
        assert_eq!(r.notes, ["no_such_mod: not in modules.dep, skipped"]);
        let o = &r.missing;
        let pos = |n: &str| {
            o.iter()
                .position(|m| m == n)
                .unwrap_or_else(|| panic!("{n} not in {o:?}"))
        };
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_net"));
        assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
        assert!(pos("scsi_common") < pos("scsi_mod") && pos("scsi_mod") < pos("sd_mod"));
        assert!(pos("libata") < pos("libahci") && pos("libahci") < pos("ahci"));
        assert!(pos("jbd2") < pos("ext4") && pos("fat") < pos("vfat"));
        let mut names = o.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), o.len(), "a module is loaded twice: {o:?}");
        // Asked again: nothing new is tried.
        let r = l.load_names(&["ext4"]);
        assert!(r.missing.is_empty() && r.loaded.is_empty());
    }
}
