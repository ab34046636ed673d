//! A UEFI boot entry for the installed disk, written through efivarfs the way
//! efibootmgr/bootctl do it.
//!
//! Why: OVMF (and plenty of real firmware) only boots what BootOrder lists. With
//! the NIC first in the firmware's order, an installed node whose iPXE says
//! `exit` falls through to... nothing, unless a Boot#### for the disk exists: the
//! removable-media path alone is not enough. BootOrder becomes: the option that
//! booted the installer (BootCurrent, the NIC) first, so the server keeps
//! deciding every boot, then the disk, then the rest; the firmware does not try
//! its other network options (PXEv6, HTTP boot: minutes of timeouts) before the
//! disk. Without BootCurrent the entry goes last.

use crate::fileop::{io, FileError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// EFI_GLOBAL_VARIABLE, the vendor GUID of Boot####, BootOrder and BootNext.
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const ATTR_NV_BS_RT: u32 = 0x07;
pub const LOAD_OPTION_ACTIVE: u32 = 0x01;
/// The removable-media loader path on the ESP (where systemd-boot is installed).
pub const LOADER_PATH: &str = "\\EFI\\BOOT\\BOOTX64.EFI";
/// Our entries are recognised (and reused on a reinstall) by this description prefix.
pub const DESCRIPTION_PREFIX: &str = "rollout ";

const FS_IMMUTABLE_FL: libc::c_long = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum EfiVarError {
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("mounting efivarfs on {EFIVARS_DIR}: {0}; is the efivarfs module in the initramfs?")]
    Mount(#[source] nix::Error),
    #[error("all 65536 Boot#### numbers are taken; delete stale entries (efibootmgr -b XXXX -B)")]
    NoFreeNumber,
    #[error("BootOrder has an odd length ({0} bytes); the variable store looks corrupt")]
    BadBootOrder(usize),
}

/// Where the EFI system partition sits, as the HardDrive device path node
/// describes it (all in logical blocks of the disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspLocation {
    /// GPT partition number, 1-based.
    pub number: u32,
    pub start_lba: u64,
    pub size_lba: u64,
    /// The partition's unique GUID in EFI (on-disk, mixed-endian) byte order.
    pub signature: [u8; 16],
}

/// NUL-terminated UCS-2 little endian. Characters outside the BMP become `?`
/// (UCS-2 has no surrogates).
pub fn ucs2(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * s.len() + 2);
    for c in s.chars() {
        let u = u16::try_from(u32::from(c)).unwrap_or(u16::from(b'?'));
        let u = if (0xd800..0xe000).contains(&u) {
            u16::from(b'?')
        } else {
            u
        };
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// HD(number,GPT,guid,start,size)/File(path)/End: the short-form path
/// firmware expands to whichever disk carries that partition GUID.
pub fn device_path(esp: &EspLocation, file: &str) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0x04, 0x01, 42, 0]);
    p.extend_from_slice(&esp.number.to_le_bytes());
    p.extend_from_slice(&esp.start_lba.to_le_bytes());
    p.extend_from_slice(&esp.size_lba.to_le_bytes());
    p.extend_from_slice(&esp.signature);
    // MBRType 2 = GPT, SignatureType 2 = GUID.
    p.extend_from_slice(&[0x02, 0x02]);
    let name = ucs2(file);
    let len = u16::try_from(4 + name.len()).expect("loader path is short");
    p.extend_from_slice(&[0x04, 0x04]);
    p.extend_from_slice(&len.to_le_bytes());
    p.extend_from_slice(&name);
    p.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    p
}

/// An EFI_LOAD_OPTION (the contents of a Boot#### variable, without the
/// efivarfs attribute prefix), active, with no optional data.
pub fn load_option(description: &str, device_path: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    o.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    let len = u16::try_from(device_path.len()).expect("device path fits a u16");
    o.extend_from_slice(&len.to_le_bytes());
    o.extend_from_slice(&ucs2(description));
    o.extend_from_slice(device_path);
    o
}

/// The description of an EFI_LOAD_OPTION, if it parses.
pub fn load_option_description(option: &[u8]) -> Option<String> {
    let rest = option.get(6..)?;
    let units: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    // Without a terminating NUL the option is malformed.
    if units.len() * 2 + 2 > rest.len() {
        return None;
    }
    Some(String::from_utf16_lossy(&units))
}

pub fn parse_boot_order(bytes: &[u8]) -> Result<Vec<u16>, EfiVarError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(EfiVarError::BadBootOrder(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

pub fn boot_order_bytes(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// `current` (the option that booted us) then `n`, then the rest of `order`;
/// `n` last when `current` is unknown or is `n` itself. No duplicates.
pub fn place_in_boot_order(order: &[u16], current: Option<u16>, n: u16) -> Vec<u16> {
    let first: Vec<u16> = match current {
        Some(c) if c != n => vec![c, n],
        _ => vec![],
    };
    let mut out = first.clone();
    out.extend(
        order
            .iter()
            .copied()
            .filter(|x| !first.contains(x) && *x != n),
    );
    if first.is_empty() {
        out.push(n);
    }
    out
}

/// BootCurrent's UINT16, if the firmware set it.
pub fn parse_boot_current(bytes: &[u8]) -> Option<u16> {
    (bytes.len() == 2).then(|| u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// The lowest Boot#### number not in `taken`.
pub fn free_boot_number(taken: &[u16]) -> Option<u16> {
    (0..=u16::MAX).find(|n| !taken.contains(n))
}

pub fn boot_var_name(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// `Boot0003-8be4df61-…` → 3. Only global-GUID Boot#### names count (not
/// BootOrder, BootNext or BootCurrent).
pub fn parse_boot_var_file(file_name: &str) -> Option<u16> {
    let (name, guid) = file_name.split_once('-')?;
    if !guid.eq_ignore_ascii_case(GLOBAL_GUID) {
        return None;
    }
    let hex = name.strip_prefix("Boot")?;
    if hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// The efivarfs file contents: attributes, then the data.
pub fn efivarfs_payload(attributes: u32, data: &[u8]) -> Vec<u8> {
    let mut v = attributes.to_le_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

/// efivarfs as the installer sees it: a directory of `Name-GUID` files.
pub struct EfiVars {
    dir: PathBuf,
}

impl EfiVars {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        EfiVars { dir: dir.into() }
    }

    /// Mounts efivarfs on its usual place unless something is mounted there.
    pub fn mount() -> Result<Self, EfiVarError> {
        let dir = Path::new(EFIVARS_DIR);
        if !crate::sys::is_mounted(dir) {
            use nix::mount::MsFlags;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            nix::mount::mount(Some("efivarfs"), dir, Some("efivarfs"), flags, None::<&str>)
                .map_err(EfiVarError::Mount)?;
        }
        Ok(EfiVars::at(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{GLOBAL_GUID}"))
    }

    /// A global variable's data (without the attributes), None if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, EfiVarError> {
        let p = self.path(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b.get(4..).unwrap_or_default().to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &p)(e).into()),
        }
    }

    /// Sets a global variable (NV|BS|RT). efivarfs takes the whole variable in
    /// one write(2) and replaces it; existing files may be immutable first.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), EfiVarError> {
        let p = self.path(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            // efivarfs replaces the variable on write; O_TRUNC is not its API.
            .truncate(false)
            .open(&p)
            .or_else(|e| {
                // Opening an immutable file for writing fails with EPERM.
                let file = File::open(&p).map_err(|_| io("open", &p)(e))?;
                clear_immutable(&file, &p)?;
                Ok::<_, EfiVarError>(
                    OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(io("open for writing", &p))?,
                )
            })?;
        clear_immutable(&f, &p)?;
        let buf = efivarfs_payload(ATTR_NV_BS_RT, data);
        let n = f.write(&buf).map_err(io("write", &p))?;
        if n != buf.len() {
            let short = std::io::Error::other(format!("short write: {n} of {} bytes", buf.len()));
            return Err(io("write", &p)(short).into());
        }
        // efivarfs replaced the variable; only a plain file (tests) can hold
        // a longer old value past the end.
        let len = buf.len() as u64;
        if f.metadata().is_ok_and(|m| m.is_file() && m.len() > len) {
            f.set_len(len).map_err(io("truncate", &p))?;
        }
        Ok(())
    }

    /// Every Boot#### number present.
    pub fn boot_numbers(&self) -> Result<Vec<u16>, EfiVarError> {
        let rd = std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))?;
        let mut v: Vec<u16> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_boot_var_file(&e.file_name().to_string_lossy()))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Creates (or, on a reinstall, overwrites our previous) Boot#### for the
    /// ESP's loader and puts it in BootOrder right after the network option
    /// that booted us. Returns its number and the BootOrder now in effect.
    pub fn add_boot_entry(
        &self,
        description: &str,
        esp: &EspLocation,
    ) -> Result<(u16, Vec<u16>), EfiVarError> {
        let taken = self.boot_numbers()?;
        let ours = taken.iter().copied().find(|&n| {
            self.read(&boot_var_name(n))
                .ok()
                .flatten()
                .and_then(|o| load_option_description(&o))
                .is_some_and(|d| d.starts_with(DESCRIPTION_PREFIX))
        });
        let n = match ours {
            Some(n) => n,
            None => free_boot_number(&taken).ok_or(EfiVarError::NoFreeNumber)?,
        };
        let option = load_option(description, &device_path(esp, LOADER_PATH));
        self.write(&boot_var_name(n), &option)?;
        let order = match self.read("BootOrder")? {
            Some(b) => parse_boot_order(&b)?,
            None => Vec::new(),
        };
        let current = self
            .read("BootCurrent")?
            .and_then(|b| parse_boot_current(&b));
        let new = place_in_boot_order(&order, current, n);
        if new != order {
            self.write("BootOrder", &boot_order_bytes(&new))?;
        }
        Ok((n, new))
    }
}

/// Adds the boot entry when booted through UEFI. `Ok(None)`: not a UEFI boot
/// (a BIOS machine told to install systemd-boot), nothing to register.
pub fn register(
    description: &str,
    esp: &EspLocation,
) -> Result<Option<(u16, Vec<u16>)>, EfiVarError> {
    if !Path::new("/sys/firmware/efi").exists() {
        return Ok(None);
    }
    EfiVars::mount()?.add_boot_entry(description, esp).map(Some)
}

fn clear_immutable(f: &File, p: &Path) -> Result<(), EfiVarError> {
    // The ioctl ABI says `long`, the kernel reads and writes an int; a zeroed
    // long holds either on little-endian x86.
    let get = nix::request_code_read!(b'f', 1, std::mem::size_of::<libc::c_long>());
    let set = nix::request_code_write!(b'f', 2, std::mem::size_of::<libc::c_long>());
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most a long into `flags`, alive for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), get as _, &mut flags as *mut libc::c_long) };
    if rc != 0 {
        return Err(io("read the flags of", p)(std::io::Error::last_os_error()).into());
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    flags &= !FS_IMMUTABLE_FL;
    // SAFETY: FS_IOC_SETFLAGS reads an int/long from `flags`, alive for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), set as _, &flags as *const libc::c_long) };
    if rc != 0 {
        return Err(io("clear the immutable flag of", p)(std::io::Error::last_os_error()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp() -> EspLocation {
        EspLocation {
            number: 1,
            start_lba: 2048,
            size_lba: 524288,
            // GUID 0f3c2a7e-1b2d-4c5e-8f90-123456789abc in EFI byte order.
            signature: [
                0x7e, 0x2a, 0x3c, 0x0f, 0x2d, 0x1b, 0x5e, 0x4c, 0x8f, 0x90, 0x12, 0x34, 0x56, 0x78,
                0x9a, 0xbc,
            ],
        }
    }

    #[test]
    fn ucs2_is_little_endian_and_nul_terminated() {
        assert_eq!(ucs2("A\\"), vec![0x41, 0, 0x5c, 0, 0, 0]);
        assert_eq!(ucs2("é"), vec![0xe9, 0, 0, 0]);
        assert_eq!(
            ucs2("😀"),
            vec![b'?', 0, 0, 0],
            "no surrogate pairs in UCS-2"
        );
    }

    #[test]
    fn device_path_is_hd_file_end_with_exact_bytes() {
        let p = device_path(&esp(), "\\A.EFI");
        let mut want = vec![0x04, 0x01, 42, 0x00];
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&[0x00, 0x08, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x00, 0x00, 0x08, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&esp().signature);
        want.extend_from_slice(&[0x02, 0x02]);
        // File node: 4 header bytes + 7 UCS-2 units (6 chars + NUL) = 18.
        want.extend_from_slice(&[0x04, 0x04, 18, 0x00]);
        want.extend_from_slice(&[b'\\', 0, b'A', 0, b'.', 0, b'E', 0, b'F', 0, b'I', 0, 0, 0]);
        want.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
        assert_eq!(p, want);
        assert_eq!(p.len(), 42 + 18 + 4);
    }

    #[test]
    fn load_option_has_attributes_length_description_path() {
        let path = device_path(&esp(), LOADER_PATH);
        let o = load_option("rollout n1", &path);
        assert_eq!(&o[..4], &[1, 0, 0, 0], "LOAD_OPTION_ACTIVE");
        assert_eq!(&o[4..6], &(path.len() as u16).to_le_bytes());
        let desc = ucs2("rollout n1");
        assert_eq!(&o[6..6 + desc.len()], desc.as_slice());
        assert_eq!(&o[6 + desc.len()..], path.as_slice());
        // The File node of the real loader path: 4 + 2 * (21 + 1) bytes.
        let file = &path[42..];
        assert_eq!(&file[..4], &[0x04, 0x04, 48, 0]);
        assert_eq!(load_option_description(&o).as_deref(), Some("rollout n1"));
        assert_eq!(load_option_description(&o[..8]), None, "unterminated");
        assert_eq!(load_option_description(&[1, 0]), None);
    }

    #[test]
    fn boot_order_is_the_booting_nic_then_the_disk() {
        // OVMF: 0 UiApp, 1 disk, 2 PXEv4, 4 PXEv6, 5 HTTPv4; booted through 2.
        assert_eq!(
            place_in_boot_order(&[0, 1, 2, 4, 5], Some(2), 3),
            [2, 3, 0, 1, 4, 5]
        );
        assert_eq!(place_in_boot_order(&[2, 3, 0, 1], Some(2), 3), [2, 3, 0, 1]);
        // A one-time network boot (BootNext) that is not in BootOrder.
        assert_eq!(place_in_boot_order(&[1, 0], Some(6), 3), [6, 3, 1, 0]);
        // No BootCurrent: last, without duplicates.
        assert_eq!(place_in_boot_order(&[3, 1, 0], None, 3), [1, 0, 3]);
        assert_eq!(place_in_boot_order(&[], None, 0), [0]);
        assert_eq!(parse_boot_current(&[1, 0]), Some(1));
        assert_eq!(parse_boot_current(&[1]), None);
        assert_eq!(boot_order_bytes(&[1, 0x0a03]), vec![1, 0, 0x03, 0x0a]);
        assert_eq!(
            parse_boot_order(&[1, 0, 0x03, 0x0a]).unwrap(),
            vec![1, 0x0a03]
        );
        assert!(matches!(
            parse_boot_order(&[1, 0, 2]),
            Err(EfiVarError::BadBootOrder(3))
        ));
    }

    #[test]
    fn picks_the_lowest_free_number_and_parses_names() {
        assert_eq!(free_boot_number(&[0, 1, 3]), Some(2));
        assert_eq!(free_boot_number(&[]), Some(0));
        let all: Vec<u16> = (0..=u16::MAX).collect();
        assert_eq!(free_boot_number(&all), None);
        assert_eq!(boot_var_name(0x1a), "Boot001A");
        let g = GLOBAL_GUID;
        assert_eq!(parse_boot_var_file(&format!("Boot001A-{g}")), Some(0x1a));
        assert_eq!(parse_boot_var_file(&format!("BootOrder-{g}")), None);
        assert_eq!(parse_boot_var_file(&format!("BootNext-{g}")), None);
        assert_eq!(
            parse_boot_var_file("Boot0001-99e275e7-75a0-4b37-a2e6-c5385e6c00cb"),
            None,
            "another vendor's GUID"
        );
        assert_eq!(efivarfs_payload(7, &[9]), vec![7, 0, 0, 0, 9]);
    }

    /// A plain directory stands in for efivarfs: the entry is created at the
    /// first free number, placed in BootOrder, and reused on a reinstall.
    #[test]
    fn add_boot_entry_places_and_reuses_our_entry() {
        let dir = tempfile::tempdir().unwrap();
        let vars = EfiVars::at(dir.path());
        let g = GLOBAL_GUID;
        let net = load_option("UEFI PXEv4", &[0x7f, 0xff, 0x04, 0x00]);
        for (name, data) in [
            ("Boot0000", net.clone()),
            ("Boot0001", net),
            ("BootOrder", boot_order_bytes(&[1, 0])),
        ] {
            std::fs::write(
                dir.path().join(format!("{name}-{g}")),
                efivarfs_payload(7, &data),
            )
            .unwrap();
        }
        let (n, _) = vars.add_boot_entry("rollout node1", &esp()).unwrap();
        assert_eq!(n, 2);
        let raw = std::fs::read(dir.path().join(format!("Boot0002-{g}"))).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(
            &raw[4..],
            load_option("rollout node1", &device_path(&esp(), LOADER_PATH)).as_slice()
        );
        let order = vars.read("BootOrder").unwrap().unwrap();
        assert_eq!(parse_boot_order(&order).unwrap(), vec![1, 0, 2]);

        // BootCurrent is volatile (BS|RT) and set by the firmware.
        let booted_through = |n: u16| {
            std::fs::write(
                dir.path().join(format!("BootCurrent-{g}")),
                efivarfs_payload(6, &n.to_le_bytes()),
            )
            .unwrap()
        };
        // Reinstalled through PXE option 1: the disk comes right behind it.
        booted_through(1);
        let mut other = esp();
        other.signature[0] ^= 0xff;
        let (n, _) = vars
            .add_boot_entry("rollout node1-renamed", &other)
            .unwrap();
        assert_eq!(n, 2, "a reinstall overwrites its own entry");
        let order = vars.read("BootOrder").unwrap().unwrap();
        assert_eq!(parse_boot_order(&order).unwrap(), vec![1, 2, 0]);
        // Reinstalled through option 0 this time: it moves first.
        booted_through(0);
        vars.add_boot_entry("rollout node1", &esp()).unwrap();
        let order = vars.read("BootOrder").unwrap().unwrap();
        assert_eq!(parse_boot_order(&order).unwrap(), vec![0, 2, 1]);
        assert_eq!(vars.boot_numbers().unwrap(), vec![0, 1, 2]);
    }
}
