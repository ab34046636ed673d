//! A serial's block image (`[install] block_image`, the stream in
//! [`crate::wire::block_image`]): the serial's tree without the image's
//! excludes, made into an ext filesystem by `mke2fs -d` with the installer's
//! own arguments, at the byte size of the node's root device, so it is the
//! filesystem the node's mke2fs would have made, already filled. Made once
//! per serial, filesystem, size and exclude list, on the first install that
//! asks (or when the plan is handed out), and kept under
//! `{state_dir}/cache/block/{image}/` (a serial's images go when it is pruned).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::wire::block_image::{self, Extent, Header, BLOCK};
use crate::wire::Fs;

#[derive(Debug, thiserror::Error)]
pub enum BlockImageError {
    #[error("{0} cannot be a block image (only ext3 and ext4 roots)")]
    Unsupported(&'static str),
    #[error("a root of {0} bytes cannot be a block image: give a multiple of 4096 between 16 MiB and 16 TiB")]
    BadSize(u64),
    #[error("reading the layout of {path}: {what}")]
    Layout { path: PathBuf, what: String },
    #[error("{tool} could not be started ({source}); install e2fsprogs and rsync on the server")]
    Spawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed making the block image {path} ({status}): {output}")]
    Failed {
        tool: &'static str,
        path: PathBuf,
        status: String,
        output: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlockImageError + '_ {
    move |source| BlockImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A made image: its file (sparse where the filesystem is empty), the
/// allocated ranges the stream sends and the metadata holes the node zeroes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockImage {
    pub path: PathBuf,
    pub image_bytes: u64,
    pub extents: Vec<Extent>,
    pub zero: Vec<Extent>,
}

impl BlockImage {
    /// The stream's length, for `Content-Length` and the node's progress.
    pub fn stream_len(&self) -> u64 {
        (block_image::HEADER_LEN
            + block_image::TRAILER_LEN
            + block_image::EXTENT_HEAD_LEN * (self.extents.len() + self.zero.len())) as u64
            + self.data_bytes()
    }

    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// Where the image of `serial` made as `fs` of `bytes` with `excludes` is
/// kept: a changed exclude list (the config's) makes another one.
pub fn cache_path(
    state_dir: &Path,
    image: &str,
    serial: u64,
    fs: Fs,
    bytes: u64,
    excludes: &[String],
) -> PathBuf {
    let digest = Sha256::digest(excludes.join("\n").as_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    cache_dir(state_dir, image).join(format!("{serial}-{}-{bytes}-{tag}.img", fs.as_str()))
}

/// One block image: which serial tree, which excludes, which size, and the
/// cache file it is kept in. Both the plan (making it ahead) and the node's
/// request (fetching it) name it the same way.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub root: PathBuf,
    pub excludes: Vec<String>,
    pub fs: Fs,
    pub bytes: u64,
    pub path: PathBuf,
}

impl Wanted {
    pub fn new(
        state_dir: &Path,
        excludes: Vec<String>,
        image: &str,
        serial: u64,
        fs: Fs,
        bytes: u64,
    ) -> Wanted {
        Wanted {
            root: super::Images::new(state_dir).serial_root(image, serial),
            path: cache_path(state_dir, image, serial, fs, bytes, &excludes),
            excludes,
            fs,
            bytes,
        }
    }

    /// [`ensure`] of this image.
    pub fn ensure(&self) -> Result<BlockImage, BlockImageError> {
        ensure(&self.path, &self.root, self.fs, self.bytes, &self.excludes)
    }
}

/// Sizes a block image may have: whole 4 KiB blocks, from what mke2fs still
/// makes with a journal to what a 32-bit ext3 can address.
pub fn check_size(bytes: u64) -> Result<u64, BlockImageError> {
    match bytes.is_multiple_of(u64::from(BLOCK)) && (16 << 20..=16 << 40).contains(&bytes) {
        true => Ok(bytes),
        false => Err(BlockImageError::BadSize(bytes)),
    }
}

fn cache_dir(state_dir: &Path, image: &str) -> PathBuf {
    state_dir.join("cache").join("block").join(image)
}

/// One builder per image file: a rack asking at once waits for one build.
fn build_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<PathBuf, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks
        .get_or_insert_with(HashMap::new)
        .entry(path.to_path_buf())
        .or_default()
        .clone()
}

/// The image at `path`, made from `root` first if it is not there yet.
/// Blocking (mke2fs and e2fsck run): call from a blocking thread.
pub fn ensure(
    path: &Path,
    root: &Path,
    fs: Fs,
    bytes: u64,
    excludes: &[String],
) -> Result<BlockImage, BlockImageError> {
    // A made image never changes: its layout is read once (dumpe2fs and
    // debugfs over a large filesystem take a while), not per node.
    static OPENED: Mutex<Option<HashMap<PathBuf, BlockImage>>> = Mutex::new(None);
    let lock = build_lock(path);
    let _one_builder = lock.lock().unwrap_or_else(|p| p.into_inner());
    let known = |opened: &Mutex<Option<HashMap<PathBuf, BlockImage>>>| {
        let map = opened.lock().unwrap_or_else(|p| p.into_inner());
        map.as_ref().and_then(|m| m.get(path).cloned())
    };
    if path.exists() {
        // Used now: the cache keeps the images used last ([`forget_pruned`]).
        let _ = File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Some(img) = known(&OPENED) {
            return Ok(img);
        }
    } else {
        build(root, fs, check_size(bytes)?, excludes, path)?;
    }
    let img = open(path)?;
    OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), img.clone());
    Ok(img)
}

/// Images kept per image name: a rack of one machine type needs one, a mixed
/// room a few; more would let a node that names ever new sizes fill the disk.
pub const MAX_CACHED: usize = 16;

/// Removes the images of serials that no longer exist (pruned), then the
/// least recently used beyond [`MAX_CACHED`] (`ensure` marks an image used),
/// so the cache does not outgrow the store.
pub fn forget_pruned(state_dir: &Path, image: &str, live: &[u64]) {
    let Ok(entries) = std::fs::read_dir(cache_dir(state_dir, image)) else {
        return;
    };
    let mut kept = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".img") {
            continue;
        }
        let serial = name.split('-').next().and_then(|s| s.parse::<u64>().ok());
        if serial.is_some_and(|s| !live.contains(&s)) {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let made = e.metadata().and_then(|m| m.modified()).ok();
        kept.push((made, e.path()));
    }
    // Newest first; whatever is past the limit goes.
    kept.sort_by_key(|k| std::cmp::Reverse(k.0));
    for (_, path) in kept.iter().skip(MAX_CACHED) {
        let _ = std::fs::remove_file(path);
    }
}

fn run(tool: &'static str, cmd: &mut Command, path: &Path) -> Result<(), BlockImageError> {
    let out = cmd
        .output()
        .map_err(|source| BlockImageError::Spawn { tool, source })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(BlockImageError::Failed {
        tool,
        path: path.to_path_buf(),
        status: out.status.to_string(),
        output,
    })
}

/// mke2fs's arguments for the image: the installer's
/// ([`block_image::mke2fs_args`]), so the node gets the filesystem its own
/// mke2fs would have made on the same device.
pub fn mke2fs_args(fs: Fs) -> Result<Vec<String>, BlockImageError> {
    match fs {
        Fs::Xfs => Err(BlockImageError::Unsupported("xfs")),
        fs => Ok(block_image::mke2fs_args(
            fs,
            crate::wire::layout::ROOT_LABEL,
        )),
    }
}

fn build(
    root: &Path,
    fs: Fs,
    bytes: u64,
    excludes: &[String],
    out: &Path,
) -> Result<(), BlockImageError> {
    let args = mke2fs_args(fs)?;
    let dir = out.parent().expect("a cache file has a directory");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let staging = out.with_extension("staging");
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(&partial);
    // The tree as the rsync copy would leave it: the same exclude patterns,
    // read by rsync itself; hard links into the serial, so nothing is copied.
    let mut rsync = Command::new("rsync");
    rsync.args(["-aHAX", "--numeric-ids"]);
    rsync.arg(format!("--link-dest={}", root.display()));
    for e in excludes {
        rsync.arg(format!("--exclude={e}"));
    }
    rsync.arg(format!("{}/", root.display()));
    rsync.arg(format!("{}/", staging.display()));
    let made = run("rsync", &mut rsync, &staging).and_then(|()| {
        File::create(&partial)
            .and_then(|f| f.set_len(bytes))
            .map_err(io_err(&partial))?;
        run(
            "mke2fs",
            Command::new("mke2fs")
                .args(&args)
                .arg("-d")
                .arg(&staging)
                .arg(&partial),
            out,
        )
    });
    let _ = std::fs::remove_dir_all(&staging);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    run(
        "e2fsck",
        Command::new("e2fsck").arg("-fn").arg(&partial),
        out,
    )?;
    std::fs::rename(&partial, out).map_err(io_err(out))
}

/// The filesystem's metadata blocks as byte ranges, sorted and merged:
/// superblocks, group descriptors, bitmaps and inode tables (`dumpe2fs`)
/// and the journal's blocks (`debugfs`).
fn metadata(path: &Path) -> Result<Vec<Extent>, BlockImageError> {
    let layout_err = |what: String| BlockImageError::Layout {
        path: path.to_path_buf(),
        what,
    };
    let out = |tool: &'static str, args: &[&str]| -> Result<String, BlockImageError> {
        let o = Command::new(tool)
            .args(args)
            .arg(path)
            .output()
            .map_err(|source| BlockImageError::Spawn { tool, source })?;
        match o.status.success() {
            true => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            false => Err(layout_err(format!(
                "{tool}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))),
        }
    };
    let dump = out("dumpe2fs", &[])?;
    let field = |name: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let block = field("Block size:").ok_or_else(|| layout_err("no block size".into()))?;
    let mut blocks = group_metadata_blocks(&dump);
    if let Some(journal) = field("Journal inode:") {
        let listed = out("debugfs", &["-R", &format!("blocks <{journal}>")])?;
        for b in listed.split_whitespace() {
            let b: u64 = b
                .parse()
                .map_err(|_| layout_err(format!("journal block {b:?}")))?;
            blocks.push((b, b));
        }
    }
    Ok(to_byte_ranges(blocks, block))
}

/// `(first, last)` block of each metadata item dumpe2fs lists per group
/// ("Inode table at 67-578 (+67)", "Block bitmap at 65 (+65), csum …").
fn group_metadata_blocks(dump: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for line in dump.lines().filter(|l| l.starts_with("  ")) {
        for part in line.split(", ") {
            let Some((what, at)) = part.split_once(" at ") else {
                continue;
            };
            let known = ["superblock", "descriptors", "GDT blocks", "bitmap", "table"];
            if !known.iter().any(|k| what.trim_end().ends_with(k)) {
                continue;
            }
            let range = at.split_whitespace().next().unwrap_or_default();
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                out.push((a, b));
            }
        }
    }
    out
}

/// Inclusive block ranges as sorted, merged byte ranges.
fn to_byte_ranges(mut blocks: Vec<(u64, u64)>, block: u64) -> Vec<Extent> {
    blocks.sort_unstable();
    let mut out: Vec<Extent> = Vec::new();
    for (a, b) in blocks {
        push_merged(&mut out, a * block, (b + 1) * block);
    }
    out
}

/// Appends `start..end` to ranges sorted by start, joining it to the last
/// one where they touch or overlap.
fn push_merged(out: &mut Vec<Extent>, start: u64, end: u64) {
    match out.last_mut() {
        Some(last) if last.offset + last.len >= start => last.len = last.len.max(end - last.offset),
        _ => out.push(Extent {
            offset: start,
            len: end - start,
        }),
    }
}

/// The parts of `holes` that `metadata` touches, widened to whole aligned
/// blocks (a hole is zeros in the image, so zeroing more of it is harmless).
pub fn zero_ranges(holes: &[Extent], metadata: &[Extent]) -> Vec<Extent> {
    let align = u64::from(BLOCK);
    let mut out: Vec<Extent> = Vec::new();
    for h in holes {
        let h_end = h.offset + h.len;
        for m in metadata {
            let start = (m.offset / align * align).max(h.offset);
            let end = (m.offset + m.len).div_ceil(align) * align;
            let end = end.min(h_end);
            if start < end {
                push_merged(&mut out, start, end);
            }
        }
    }
    out
}

/// A made image's allocated ranges (SEEK_DATA / SEEK_HOLE), block aligned.
pub fn open(path: &Path) -> Result<BlockImage, BlockImageError> {
    let f = File::open(path).map_err(io_err(path))?;
    let image_bytes = f.metadata().map_err(io_err(path))?.len();
    let extents = allocated(&f, image_bytes).map_err(io_err(path))?;
    let zero = zero_ranges(&block_image::holes(&extents, image_bytes), &metadata(path)?);
    Ok(BlockImage {
        path: path.to_path_buf(),
        image_bytes,
        extents,
        zero,
    })
}

fn allocated(f: &File, size: u64) -> io::Result<Vec<Extent>> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let block = u64::from(BLOCK);
    let mut out: Vec<Extent> = Vec::new();
    let mut at: u64 = 0;
    while at < size {
        let data = match lseek(f.as_raw_fd(), at as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            // ENXIO: no data past `at`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(f.as_raw_fd(), data as i64, Whence::SeekHole)? as u64;
        let start = data / block * block;
        let end = hole.div_ceil(block) * block;
        let end = end.min(size.div_ceil(block) * block);
        match out.last_mut() {
            Some(last) if last.offset + last.len >= start => last.len = end - last.offset,
            _ => out.push(Extent {
                offset: start,
                len: end - start,
            }),
        }
        at = hole;
    }
    Ok(out)
}

/// Writes the stream of `img` to `w` (header, extents, crc trailer).
pub fn write_stream(img: &BlockImage, w: &mut impl Write) -> io::Result<()> {
    let mut f = File::open(&img.path)?;
    w.write_all(
        &Header {
            image_bytes: img.image_bytes,
            extents: img.extents.len() as u64,
            data_bytes: img.data_bytes(),
            zero_ranges: img.zero.len() as u64,
        }
        .encode(),
    )?;
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    for z in &img.zero {
        let head = z.encode();
        hash.update(&head);
        w.write_all(&head)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    for e in &img.extents {
        w.write_all(&e.encode())?;
        f.seek(SeekFrom::Start(e.offset))?;
        let mut left = e.len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            // Past the file's end (its last block rounded up) reads as zeros.
            let got = read_up_to(&mut f, &mut buf[..n])?;
            buf[got..n].fill(0);
            hash.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    w.write_all(&block_image::encode_trailer(hash.digest()))?;
    w.flush()
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests;
