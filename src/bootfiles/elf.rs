//! Just enough ELF parsing to find what a dynamically linked program needs at run time:
//! its program interpreter (`PT_INTERP`) and its `DT_NEEDED` libraries. x86-64 only,
//! which is all the initramfs targets.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfDeps {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF file (only x86-64 programs are supported)")]
    Unsupported,
    #[error("truncated or corrupt ELF file: {0}")]
    Corrupt(&'static str),
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Corrupt("header past end of file"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or(ElfError::Corrupt("field past end of file"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .ok_or(ElfError::Corrupt("field past end of file"))
}

fn cstr_at(b: &[u8], off: usize) -> Result<String, ElfError> {
    let tail = b
        .get(off..)
        .ok_or(ElfError::Corrupt("string past end of file"))?;
    let end = tail
        .iter()
        .position(|&c| c == 0)
        .ok_or(ElfError::Corrupt("unterminated string"))?;
    Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
}

pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Parses an ELF file's run-time dependencies. A static executable yields an empty result.
pub fn parse(b: &[u8]) -> Result<ElfDeps, ElfError> {
    if !is_elf(b) || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(ElfError::Unsupported);
    }
    let phoff = u64_at(b, 0x20)? as usize;
    let phentsize = u16_at(b, 0x36)? as usize;
    let phnum = u16_at(b, 0x38)? as usize;
    if phentsize < 56 {
        return Err(ElfError::Corrupt("program header entries too small"));
    }
    let mut phdrs = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        phdrs.push(Phdr {
            kind: u32_at(b, o)?,
            offset: u64_at(b, o + 8)?,
            vaddr: u64_at(b, o + 16)?,
            filesz: u64_at(b, o + 32)?,
        });
    }
    let mut deps = ElfDeps::default();
    if let Some(p) = phdrs.iter().find(|p| p.kind == PT_INTERP) {
        deps.interp = Some(cstr_at(b, p.offset as usize)?);
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else {
        return Ok(deps);
    };
    let mut needed_offsets = Vec::new();
    let mut path_offsets = Vec::new();
    let mut strtab_vaddr = None;
    let mut o = dynamic.offset as usize;
    let end = o + dynamic.filesz as usize;
    while o + 16 <= end {
        let (tag, val) = (u64_at(b, o)?, u64_at(b, o + 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed_offsets.push(val),
            DT_STRTAB => strtab_vaddr = Some(val),
            DT_RPATH | DT_RUNPATH => path_offsets.push(val),
            _ => {}
        }
        o += 16;
    }
    let Some(strtab_vaddr) = strtab_vaddr else {
        return Ok(deps);
    };
    // DT_STRTAB is a virtual address; the PT_LOAD segment holding it maps it to a file offset.
    let strtab = phdrs
        .iter()
        .find(|p| p.kind == PT_LOAD && p.vaddr <= strtab_vaddr && strtab_vaddr < p.vaddr + p.filesz)
        .map(|p| (strtab_vaddr - p.vaddr + p.offset) as usize)
        .ok_or(ElfError::Corrupt("string table outside loaded segments"))?;
    for n in needed_offsets {
        deps.needed.push(cstr_at(b, strtab + n as usize)?);
    }
    for p in path_offsets {
        let s = cstr_at(b, strtab + p as usize)?;
        deps.runpath
            .extend(s.split(':').filter(|s| !s.is_empty()).map(String::from));
    }
    Ok(deps)
}

/// The bytes of section `name` (`.modinfo` of a kernel module), `None` when the
/// file has no such section.
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    if !is_elf(b) || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(ElfError::Unsupported);
    }
    let shoff = u64_at(b, 0x28)? as usize;
    let shentsize = u16_at(b, 0x3a)? as usize;
    let shnum = u16_at(b, 0x3c)? as usize;
    let shstrndx = u16_at(b, 0x3e)? as usize;
    if shentsize < 64 || shstrndx >= shnum {
        return Err(ElfError::Corrupt("bad section header table"));
    }
    let shdr = |i: usize| -> Result<(u32, usize, usize), ElfError> {
        let o = shoff + i * shentsize;
        Ok((
            u32_at(b, o)?,
            u64_at(b, o + 24)? as usize,
            u64_at(b, o + 32)? as usize,
        ))
    };
    let (_, names_off, _) = shdr(shstrndx)?;
    for i in 0..shnum {
        let (name_off, off, size) = shdr(i)?;
        if cstr_at(b, names_off + name_off as usize)? == name {
            return b
                .get(off..off.saturating_add(size))
                .map(Some)
                .ok_or(ElfError::Corrupt("section past end of file"));
        }
    }
    Ok(None)
}

/// Where the Debian x86-64 loader looks for libraries (ld.so.conf plus the defaults).
pub const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// Finds library `name` needed by the program at `origin` the way ld.so would:
/// RPATH/RUNPATH first (with `$ORIGIN`), then the system directories.
pub fn find_library(name: &str, origin: &Path, runpath: &[String]) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    let origin_dir = origin.parent().unwrap_or(Path::new("/"));
    let origin_dir = origin_dir.to_string_lossy();
    let dirs = runpath
        .iter()
        .map(|d| {
            d.replace("$ORIGIN", &origin_dir)
                .replace("${ORIGIN}", &origin_dir)
        })
        .chain(LIBRARY_DIRS.iter().map(|d| d.to_string()));
    for dir in dirs {
        let candidate = Path::new(&dir).join(name);
        // A 32-bit library of the same name in a multilib dir would not load: skip it.
        if let Ok(bytes) = std::fs::read(&candidate) {
            if parse(&bytes).is_ok() {
                return Some(candidate);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::prereq;

    #[test]
    fn rejects_non_elf() {
        assert_eq!(parse(b"#!/bin/sh\n"), Err(ElfError::Unsupported));
        assert!(matches!(
            parse(b"\x7fELF\x02\x01\x01\x00"),
            Err(ElfError::Corrupt(_))
        ));
    }

    #[test]
    fn host_rsync_needs_libc_and_the_loader() {
        if !prereq::require_file("/usr/bin/rsync", "rsync") {
            return;
        }
        let bytes = std::fs::read("/usr/bin/rsync").unwrap();
        let deps = parse(&bytes).unwrap();
        assert_eq!(deps.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(deps.needed.iter().any(|n| n == "libc.so.6"), "{deps:?}");
        assert!(
            deps.needed.iter().any(|n| n.starts_with("libpopt")),
            "{deps:?}"
        );
        let libc = find_library("libc.so.6", Path::new("/usr/bin/rsync"), &[]).unwrap();
        assert!(
            libc.to_string_lossy().contains("x86_64-linux-gnu"),
            "{libc:?}"
        );
    }

    #[test]
    fn static_busybox_has_no_deps() {
        if !prereq::require_file("/bin/busybox", "busybox-static") {
            return;
        }
        let deps = parse(&std::fs::read("/bin/busybox").unwrap()).unwrap();
        if deps.interp.is_some() {
            prereq::missing(
                "/bin/busybox is dynamically linked here (Debian package busybox-static has a static one)",
            );
            return;
        }
        assert!(deps.needed.is_empty());
    }
}
