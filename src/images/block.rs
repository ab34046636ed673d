//! A serial's block image (`[install] block_image`, the stream in
//! [`crate::wire::block_image`]): the serial's tree without the image's
//! excludes, made into an ext filesystem by `mke2fs -d` and shrunk to its
//! minimum by `resize2fs -M`. Made once per serial, filesystem and exclude
//! list, on the first install that asks, and kept under
//! `{state_dir}/cache/block/{image}/` (a serial's images go when it is pruned).
//!
//! The journal is left out: the node adds one sized for its own partition
//! after growing the filesystem, so the stream carries no zeros for it.

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

/// A made image: its file (sparse where the filesystem is empty) and the
/// allocated ranges the stream sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockImage {
    pub path: PathBuf,
    pub image_bytes: u64,
    pub extents: Vec<Extent>,
}

impl BlockImage {
    /// The stream's length, for `Content-Length` and the node's progress.
    pub fn stream_len(&self) -> u64 {
        let data: u64 = self.extents.iter().map(|e| e.len).sum();
        (block_image::HEADER_LEN
            + block_image::TRAILER_LEN
            + block_image::EXTENT_HEAD_LEN * self.extents.len()) as u64
            + data
    }

    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// Where the image of `serial` made as `fs` with `excludes` is kept: a
/// changed exclude list (the config's) makes another one.
pub fn cache_path(
    state_dir: &Path,
    image: &str,
    serial: u64,
    fs: Fs,
    excludes: &[String],
) -> PathBuf {
    let digest = Sha256::digest(excludes.join("\n").as_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    cache_dir(state_dir, image).join(format!("{serial}-{}-{tag}.img", fs.as_str()))
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
/// Blocking (mke2fs and resize2fs run): call from a blocking thread.
pub fn ensure(
    path: &Path,
    root: &Path,
    fs: Fs,
    excludes: &[String],
) -> Result<BlockImage, BlockImageError> {
    let lock = build_lock(path);
    let _one_builder = lock.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() {
        build(root, fs, excludes, path)?;
    }
    open(path)
}

/// Removes the images of serials that no longer exist (pruned), so the cache
/// does not outgrow the store.
pub fn forget_pruned(state_dir: &Path, image: &str, live: &[u64]) {
    let Ok(entries) = std::fs::read_dir(cache_dir(state_dir, image)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let serial = name.split('-').next().and_then(|s| s.parse::<u64>().ok());
        if serial.is_some_and(|s| !live.contains(&s)) {
            let _ = std::fs::remove_file(e.path());
        }
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

/// mke2fs features of the image: the installer's for `fs`, without the journal.
pub fn image_features(fs: Fs) -> Result<String, BlockImageError> {
    match fs {
        Fs::Xfs => Err(BlockImageError::Unsupported("xfs")),
        fs => Ok(match block_image::ext_features(fs) {
            Some(f) => f.replace("has_journal", "^has_journal"),
            None => "^has_journal".into(),
        }),
    }
}

fn build(root: &Path, fs: Fs, excludes: &[String], out: &Path) -> Result<(), BlockImageError> {
    let features = image_features(fs)?;
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
        let kib = allocated_kib(&staging)?;
        // Room for mke2fs -d, at least two full block groups (so each group
        // has the inodes a full-size filesystem's has); -M then shrinks it.
        let mut size_kib = (kib * 2 + 64 * 1024).max(256 * 1024);
        loop {
            let _ = std::fs::remove_file(&partial);
            let r = run(
                "mke2fs",
                Command::new("mke2fs")
                    .args(["-q", "-F", "-t", fs.as_str(), "-T", "default", "-b"])
                    .arg(BLOCK.to_string())
                    .args(["-O", &features, "-d"])
                    .arg(&staging)
                    .arg(&partial)
                    .arg(format!("{size_kib}K")),
                out,
            );
            match r {
                // Many small files can fill the inodes before the blocks.
                Err(_) if size_kib < kib * 16 + (1 << 20) => size_kib *= 2,
                r => break r,
            }
        }
    });
    let _ = std::fs::remove_dir_all(&staging);
    made?;
    run(
        "resize2fs",
        Command::new("resize2fs").arg("-M").arg(&partial),
        out,
    )?;
    run(
        "e2fsck",
        Command::new("e2fsck").arg("-fn").arg(&partial),
        out,
    )?;
    std::fs::rename(&partial, out).map_err(io_err(out))
}

/// `du -sk`: what the tree takes on disk, hard links once.
fn allocated_kib(dir: &Path) -> Result<u64, BlockImageError> {
    let out = Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .map_err(|source| BlockImageError::Spawn { tool: "du", source })?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| BlockImageError::Failed {
            tool: "du",
            path: dir.to_path_buf(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
}

/// A made image's allocated ranges (SEEK_DATA / SEEK_HOLE), block aligned.
pub fn open(path: &Path) -> Result<BlockImage, BlockImageError> {
    let f = File::open(path).map_err(io_err(path))?;
    let image_bytes = f.metadata().map_err(io_err(path))?.len();
    let extents = allocated(&f, image_bytes).map_err(io_err(path))?;
    Ok(BlockImage {
        path: path.to_path_buf(),
        image_bytes,
        extents,
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
        }
        .encode(),
    )?;
    let mut crc = crc32fast::Hasher::new();
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
            crc.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    w.write_all(&block_image::encode_trailer(crc.finalize()))?;
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
mod tests {
    use super::*;

    #[test]
    fn the_image_keeps_the_installers_features_but_not_the_journal() {
        assert_eq!(
            image_features(Fs::Ext3).unwrap(),
            "^has_journal,^extent,^64bit,^metadata_csum"
        );
        assert_eq!(image_features(Fs::Ext4).unwrap(), "^has_journal");
        assert!(image_features(Fs::Xfs).is_err());
    }

    #[test]
    fn a_changed_exclude_list_is_another_image() {
        let a = cache_path(Path::new("/s"), "default", 3, Fs::Ext3, &["/tmp/*".into()]);
        let b = cache_path(Path::new("/s"), "default", 3, Fs::Ext3, &["/var/*".into()]);
        assert_ne!(a, b);
        assert!(a.starts_with("/s/cache/block/default"));
        assert!(a
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("3-ext3-"));
    }

    #[test]
    fn extents_are_the_files_data_block_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 * 4096).unwrap();
        f.seek(SeekFrom::Start(8 * 4096 + 10)).unwrap();
        f.write_all(b"x").unwrap();
        f.seek(SeekFrom::Start(40 * 4096)).unwrap();
        f.write_all(&[1; 8192]).unwrap();
        drop(f);
        let img = open(&p).unwrap();
        assert_eq!(img.image_bytes, 64 * 4096);
        // The filesystem under the temp dir may allocate in bigger units; the
        // data must be covered, aligned, and far less than the file.
        assert!(img
            .extents
            .iter()
            .all(|e| e.offset % 4096 == 0 && e.len % 4096 == 0));
        let covers = |o: u64| {
            img.extents
                .iter()
                .any(|e| e.offset <= o && o < e.offset + e.len)
        };
        assert!(covers(8 * 4096 + 10) && covers(40 * 4096) && covers(41 * 4096 + 4095));
        assert!(img.data_bytes() < 64 * 4096);
        let mut stream = Vec::new();
        write_stream(&img, &mut stream).unwrap();
        assert_eq!(stream.len() as u64, img.stream_len());
    }
}
