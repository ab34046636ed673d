//! What a disk already holds, read from its first MiB before anything is
//! written: a partition table (GPT, MBR) or a filesystem, RAID, LVM or LUKS
//! signature at its start. The installer refuses such a disk for a node nobody
//! declared or approved (`disk::guard`), so a machine that network-boots on the
//! wrong LAN keeps its data.
//!
//! The probe is a pure function of the bytes ([`probe`]); [`read`] only fetches
//! them. It looks where blkid looks for the common signatures; a disk that
//! `partition::wipe` cleaned (first and last MiB zeroed) reads as blank.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// How much of the disk the probe reads: the GPT header and its entry array
/// (LBA 2 on), the ext superblock (1 KiB), btrfs (64 KiB), iso9660 (32 KiB).
pub const PROBE_BYTES: usize = 1 << 20;

/// Something on the disk that someone may want to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Gpt {
        partitions: usize,
    },
    Mbr {
        partitions: usize,
    },
    /// A filesystem or volume signature at the start of the disk: "ext4", "xfs",
    /// "LVM2 physical volume", ...
    Signature(&'static str),
}

impl fmt::Display for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        match self {
            Contents::Gpt { partitions: n } => write!(f, "GPT with {n} partition{}", plural(*n)),
            Contents::Mbr { partitions: n } => write!(f, "MBR with {n} partition{}", plural(*n)),
            // "LVM2 physical volume" says what it is; "ext4" needs a noun.
            Contents::Signature(s) if s.contains(' ') => f.write_str(s),
            Contents::Signature(s) => write!(f, "{s} filesystem"),
        }
    }
}

fn at(buf: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    buf.get(off..off.checked_add(len)?)
}

fn le32(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(at(buf, off, 4)?.try_into().ok()?))
}

fn le64(buf: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(at(buf, off, 8)?.try_into().ok()?))
}

fn has(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    at(buf, off, magic.len()) == Some(magic)
}

/// What the first bytes of a disk (at least [`PROBE_BYTES`] when the disk is
/// that big) say it holds; `None`: blank as far as the probe can tell.
/// `sector` is the disk's logical sector size (where the GPT header sits).
pub fn probe(buf: &[u8], sector: usize) -> Option<Contents> {
    // GPT first: its protective MBR would otherwise read as "MBR with 1 partition".
    for s in [sector, 512, 4096] {
        if let Some(g) = gpt(buf, s) {
            return Some(g);
        }
    }
    // Signatures at sector 0 that share the 0x55AA boot signature with an MBR.
    if has(buf, 3, b"NTFS    ") {
        return Some(Contents::Signature("ntfs"));
    }
    if has(buf, 54, b"FAT1") || has(buf, 82, b"FAT32") {
        return Some(Contents::Signature("vfat"));
    }
    if let Some(m) = mbr(buf) {
        return Some(m);
    }
    signature(buf).map(Contents::Signature)
}

fn gpt(buf: &[u8], sector: usize) -> Option<Contents> {
    if !has(buf, sector, b"EFI PART") {
        return None;
    }
    let entries_lba = le64(buf, sector + 72)? as usize;
    let count = le32(buf, sector + 80)? as usize;
    let size = le32(buf, sector + 84)? as usize;
    // Entries past the probed bytes are not counted (a header that places them
    // there is unusual); the table itself is reason enough to refuse.
    let partitions = (0..count.min(4096))
        .filter_map(|i| at(buf, entries_lba.checked_mul(sector)? + i * size, 16))
        .filter(|type_guid| type_guid.iter().any(|&b| b != 0))
        .count();
    Some(Contents::Gpt { partitions })
}

fn mbr(buf: &[u8]) -> Option<Contents> {
    if !has(buf, 510, &[0x55, 0xAA]) {
        return None;
    }
    // Four 16-byte entries from 446; a used one has a type and a sane status byte.
    let partitions = (0..4)
        .filter_map(|i| at(buf, 446 + 16 * i, 16))
        .filter(|e| e[4] != 0 && (e[0] == 0 || e[0] == 0x80))
        .count();
    (partitions > 0).then_some(Contents::Mbr { partitions })
}

/// Filesystem and volume signatures at the start of a whole-disk device.
fn signature(buf: &[u8]) -> Option<&'static str> {
    if le32(buf, 1024 + 56).map(|m| m & 0xffff) == Some(0xEF53) {
        let compat = le32(buf, 1024 + 92)?;
        let incompat = le32(buf, 1024 + 96)?;
        // extents, 64bit or flex_bg: only ext4 sets them; a journal makes ext3.
        return Some(if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        });
    }
    let fixed: [(usize, &[u8], &'static str); 9] = [
        (0, b"XFSB", "xfs"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (0, b"LUKS\xba\xbe", "LUKS encrypted volume"),
        (4096 - 10, b"SWAPSPACE2", "swap area"),
        (4096 - 10, b"SWAP-SPACE", "swap area"),
        (0, b"hsqs", "squashfs"),
        (0x8001, b"CD001", "iso9660"),
        (0, &[0xfc, 0x4e, 0x2b, 0xa9], "Linux RAID member"),
        (4096, &[0xfc, 0x4e, 0x2b, 0xa9], "Linux RAID member"),
    ];
    if let Some((_, _, name)) = fixed.iter().find(|(off, magic, _)| has(buf, *off, magic)) {
        return Some(name);
    }
    // LVM's label is in one of the first four 512-byte sectors.
    (0..4)
        .any(|s| has(buf, s * 512, b"LABELONE") && has(buf, s * 512 + 24, b"LVM2 001"))
        .then_some("LVM2 physical volume")
}

/// Reads the first [`PROBE_BYTES`] of `dev` (less if it is smaller) and probes them.
pub fn read(dev: &Path, sector: u64) -> std::io::Result<Option<Contents>> {
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    std::fs::File::open(dev)?
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut buf)?;
    Ok(probe(&buf, sector as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Vec<u8> {
        vec![0u8; PROBE_BYTES]
    }

    fn gpt_disk(sector: usize, parts: usize) -> Vec<u8> {
        let mut b = blank();
        // Protective MBR.
        b[446 + 4] = 0xEE;
        b[510] = 0x55;
        b[511] = 0xAA;
        b[sector..sector + 8].copy_from_slice(b"EFI PART");
        b[sector + 72..sector + 80].copy_from_slice(&2u64.to_le_bytes());
        b[sector + 80..sector + 84].copy_from_slice(&128u32.to_le_bytes());
        b[sector + 84..sector + 88].copy_from_slice(&128u32.to_le_bytes());
        for i in 0..parts {
            b[2 * sector + i * 128] = 0x83;
        }
        b
    }

    fn ext(compat: u32, incompat: u32) -> Vec<u8> {
        let mut b = blank();
        b[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[1024 + 92..1024 + 96].copy_from_slice(&compat.to_le_bytes());
        b[1024 + 96..1024 + 100].copy_from_slice(&incompat.to_le_bytes());
        b
    }

    #[test]
    fn a_zeroed_disk_is_blank() {
        assert_eq!(probe(&blank(), 512), None);
        assert_eq!(
            probe(&[], 512),
            None,
            "a tiny or empty read is not an error"
        );
    }

    #[test]
    fn partition_tables_are_named_with_their_partition_count() {
        let g = probe(&gpt_disk(512, 3), 512).unwrap();
        assert_eq!(g.to_string(), "GPT with 3 partitions");
        // The header of a 4096-byte-sector disk, whatever sector size is passed.
        assert_eq!(
            probe(&gpt_disk(4096, 1), 512).unwrap().to_string(),
            "GPT with 1 partition"
        );
        assert_eq!(
            probe(&gpt_disk(512, 0), 512),
            Some(Contents::Gpt { partitions: 0 })
        );
        let mut m = blank();
        m[510] = 0x55;
        m[511] = 0xAA;
        m[446] = 0x80;
        m[446 + 4] = 0x83;
        m[446 + 16 + 4] = 0x82;
        assert_eq!(probe(&m, 512).unwrap().to_string(), "MBR with 2 partitions");
        // Boot code with a signature but no entries is no partition table.
        m[446 + 4] = 0;
        m[446 + 16 + 4] = 0;
        assert_eq!(probe(&m, 512), None);
    }

    #[test]
    fn filesystems_are_named() {
        assert_eq!(
            probe(&ext(0x4, 0x2c2), 512).unwrap().to_string(),
            "ext4 filesystem"
        );
        assert_eq!(
            probe(&ext(0x4, 0x2), 512).unwrap().to_string(),
            "ext3 filesystem"
        );
        assert_eq!(
            probe(&ext(0, 0x2), 512).unwrap().to_string(),
            "ext2 filesystem"
        );
        let mut x = blank();
        x[..4].copy_from_slice(b"XFSB");
        assert_eq!(probe(&x, 512).unwrap().to_string(), "xfs filesystem");
        let mut l = blank();
        l[512..520].copy_from_slice(b"LABELONE");
        l[536..544].copy_from_slice(b"LVM2 001");
        assert_eq!(probe(&l, 512).unwrap().to_string(), "LVM2 physical volume");
        let mut f = blank();
        f[82..87].copy_from_slice(b"FAT32");
        f[510] = 0x55;
        f[511] = 0xAA;
        f[446 + 4] = 0x0c; // boot code bytes that look like an entry
        assert_eq!(probe(&f, 512).unwrap().to_string(), "vfat filesystem");
        let mut s = blank();
        s[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(probe(&s, 512).unwrap().to_string(), "swap area");
    }
}
