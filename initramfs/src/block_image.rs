//! Writing the serial's block image onto the root device
//! (`rollout::wire::block_image`, `[install] block_image`): the image is made
//! by the server for this device's size; each extent goes straight to its
//! offset with O_DIRECT (no page cache copy), the metadata the image leaves
//! as holes is zeroed, and the stream's xxh3 is checked before the
//! filesystem is used. `format::set_identity` then gives it this node's
//! UUID and label.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rollout::wire::block_image::{self as wire, Extent, Header, StreamError};
use rollout::wire::{paths as wire_paths, Fs, InstallPlan};

use crate::http_client;

/// How long the stream may stall before the installer gives up on it.
const STALL: Duration = Duration::from_secs(60);
/// Bytes per write: large, so the device sees few big requests.
const CHUNK: usize = 4 << 20;
/// `_IOR(0x12, 114, u64)`: a block device's size in bytes.
const BLKGETSIZE64: u32 = 0x8008_1272;
/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: u32 = 0x127f;

#[derive(Debug, thiserror::Error)]
pub enum BlockImageError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: http_client::HttpError,
    },
    #[error("the block image stream: {0}")]
    Stream(#[from] StreamError),
    #[error("reading the block image stream: {0}")]
    Read(#[source] io::Error),
    #[error("writing {device}: {source}")]
    Write {
        device: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the block image's xxh3 is {got:016x}, the server sent {want:016x}: the stream was damaged"
    )]
    Checksum { got: u64, want: u64 },
    #[error("the block image is for {image} bytes but {device} holds {device_bytes}: the server answered another size")]
    WrongSize {
        image: u64,
        device: String,
        device_bytes: u64,
    },
}

pub fn url(server: &str, install_id: &str, fs: Fs, bytes: u64) -> String {
    format!(
        "{}{}/{install_id}/root.img?fs={}&bytes={bytes}",
        server.trim_end_matches('/'),
        wire_paths::INSTALLS,
        fs.as_str()
    )
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub data_bytes: u64,
    pub image_bytes: u64,
    pub took: Duration,
    /// Until the server's headers came (it may still have been making the image).
    pub answered: Duration,
    /// The metadata zeroed and the device flushed, after the last extent.
    pub finished: Duration,
}

/// Streams the plan's block image onto `device`; `progress(done, total)`
/// after each chunk.
pub fn write(
    plan: &InstallPlan,
    fs: Fs,
    device: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written, BlockImageError> {
    let dev = device.display().to_string();
    let size = open_device(device)
        .and_then(|f| device_bytes(&f))
        .map_err(|source| BlockImageError::Write {
            device: dev,
            source,
        })?;
    let url = url(&plan.server_url, &plan.install_id, fs, size);
    let started = Instant::now();
    let body = http_client::get_stream(&url, &plan.token, STALL)
        .map_err(|source| BlockImageError::Http { url, source })?;
    let answered = started.elapsed();
    let (data_bytes, image_bytes, finished) = write_from(body, device, progress)?;
    Ok(Written {
        data_bytes,
        image_bytes,
        took: started.elapsed(),
        answered,
        finished,
    })
}

/// A buffer O_DIRECT takes: its address aligned to the device's blocks.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let align = wire::BLOCK as usize;
        let raw = vec![0u8; len + align];
        let start = raw.as_ptr().align_offset(align);
        Aligned { raw, start }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

fn open_device(device: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        // A file (tests) or a device that refuses O_DIRECT: through the cache.
        .or_else(|_| OpenOptions::new().write(true).open(device))
}

fn device_bytes(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer given.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if r == 0 {
        return Ok(size);
    }
    Ok(f.metadata()?.len())
}

/// Zeroes `len` bytes at `offset`: BLKZEROOUT where the device has it (no
/// data crosses the bus), else written zeros.
fn zero_range(f: &File, e: Extent, buf: &mut Aligned) -> io::Result<()> {
    let range: [u64; 2] = [e.offset, e.len];
    // SAFETY: BLKZEROOUT reads two u64s (start, length) from the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, &range) } == 0 {
        return Ok(());
    }
    let mut at = e.offset;
    let end = e.offset + e.len;
    while at < end {
        let n = (end - at).min(CHUNK as u64) as usize;
        let b = buf.slice(n);
        b.fill(0);
        f.write_all_at(b, at)?;
        at += n as u64;
    }
    Ok(())
}

/// Every extent of the stream onto `f`, hashed as it passes; the data bytes
/// written. (A writer thread beside the reader measured no faster in the
/// TCG lab, where both share the one emulated CPU.)
fn write_extents(
    body: &mut impl Read,
    f: &File,
    header: &Header,
    hash: &mut xxhash_rust::xxh3::Xxh3,
    progress: &mut dyn FnMut(u64, u64),
    werr: &dyn Fn(io::Error) -> BlockImageError,
) -> Result<u64, BlockImageError> {
    let mut buf = Aligned::new(CHUNK);
    let mut end = 0;
    let mut done = 0;
    for _ in 0..header.extents {
        let e = Extent::decode(&read_extent_head(body)?, end, header.image_bytes)?;
        let mut at = e.offset;
        end = e.offset + e.len;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            let b = buf.slice(n);
            body.read_exact(b).map_err(BlockImageError::Read)?;
            hash.update(b);
            f.write_all_at(b, at).map_err(werr)?;
            at += n as u64;
            done += n as u64;
            progress(done, header.data_bytes);
        }
    }
    Ok(done)
}

fn read_extent_head(body: &mut impl Read) -> Result<[u8; wire::EXTENT_HEAD_LEN], BlockImageError> {
    let mut h = [0u8; wire::EXTENT_HEAD_LEN];
    body.read_exact(&mut h).map_err(BlockImageError::Read)?;
    Ok(h)
}

/// The stream from `body` onto `device`: (data bytes, image bytes, the time
/// zeroing and flushing took after the last extent).
pub fn write_from(
    mut body: impl Read,
    device: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, u64, Duration), BlockImageError> {
    let dev = device.display().to_string();
    let werr = |source| BlockImageError::Write {
        device: dev.clone(),
        source,
    };
    let mut head = [0u8; wire::HEADER_LEN];
    body.read_exact(&mut head).map_err(BlockImageError::Read)?;
    let header = Header::decode(&head)?;
    let f = open_device(device).map_err(werr)?;
    let device_bytes = device_bytes(&f).map_err(werr)?;
    if header.image_bytes != device_bytes {
        return Err(BlockImageError::WrongSize {
            image: header.image_bytes,
            device: dev.clone(),
            device_bytes,
        });
    }
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    // All of the zero list before a byte is written: a bad range refuses
    // the stream while the device is untouched.
    let mut zero = Vec::new();
    let mut end = 0;
    for _ in 0..header.zero_ranges {
        let h = read_extent_head(&mut body)?;
        hash.update(&h);
        let z = Extent::decode(&h, end, header.image_bytes)?;
        end = z.offset + z.len;
        zero.push(z);
    }
    let done = write_extents(&mut body, &f, &header, &mut hash, progress, &werr)?;
    let mut tail = [0u8; wire::TRAILER_LEN];
    body.read_exact(&mut tail).map_err(BlockImageError::Read)?;
    let want = wire::decode_trailer(&tail)?;
    let got = hash.digest();
    if got != want {
        return Err(BlockImageError::Checksum { got, want });
    }
    // What an earlier install left in the inode tables, bitmaps and journal
    // must not read back as inodes or transactions.
    let last_extent = Instant::now();
    let mut buf = Aligned::new(CHUNK);
    for z in zero {
        zero_range(&f, z, &mut buf).map_err(werr)?;
    }
    f.sync_all().map_err(werr)?;
    Ok((done, header.image_bytes, last_extent.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(image_bytes: u64, zero: &[(u64, u64)], extents: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let data: u64 = extents.iter().map(|(_, d)| d.len() as u64).sum();
        let mut s = Header {
            image_bytes,
            extents: extents.len() as u64,
            data_bytes: data,
            zero_ranges: zero.len() as u64,
        }
        .encode()
        .to_vec();
        let mut crc = xxhash_rust::xxh3::Xxh3::new();
        for &(offset, len) in zero {
            let h = Extent { offset, len }.encode();
            crc.update(&h);
            s.extend(h);
        }
        for (offset, d) in extents {
            s.extend(
                Extent {
                    offset: *offset,
                    len: d.len() as u64,
                }
                .encode(),
            );
            s.extend(d);
            crc.update(d);
        }
        s.extend(wire::encode_trailer(crc.digest()));
        s
    }

    #[test]
    fn extents_land_at_their_offsets_and_the_listed_metadata_is_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        // An "old install" everywhere: the listed ranges must not keep it.
        std::fs::write(&dev, vec![0xAAu8; 32 * 4096]).unwrap();
        let s = stream(
            32 * 4096,
            &[(0, 4096), (12 * 4096, 2 * 4096)],
            &[(4096, vec![1; 8192]), (20 * 4096, vec![2; 4096])],
        );
        let mut seen = Vec::new();
        let (data, image, _) = write_from(&s[..], &dev, &mut |d, t| seen.push((d, t))).unwrap();
        assert_eq!((data, image), (12288, 32 * 4096));
        assert_eq!(seen.last(), Some(&(12288, 12288)));
        let disk = std::fs::read(&dev).unwrap();
        let all = |r: std::ops::Range<usize>, v: u8| disk[r].iter().all(|&b| b == v);
        assert!(all(0..4096, 0));
        assert!(all(4096..12288, 1));
        // Free blocks keep what was there, as after mke2fs.
        assert!(all(12288..12 * 4096, 0xAA));
        assert!(all(12 * 4096..14 * 4096, 0));
        assert!(all(20 * 4096..21 * 4096, 2));
        assert!(all(21 * 4096..32 * 4096, 0xAA));
    }

    #[test]
    fn a_damaged_stream_is_refused_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0u8; 8 * 4096]).unwrap();
        let mut s = stream(8 * 4096, &[], &[(0, vec![7; 4096])]);
        s[wire::HEADER_LEN + wire::EXTENT_HEAD_LEN + 100] ^= 1;
        let e = write_from(&s[..], &dev, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, BlockImageError::Checksum { .. }), "{e}");
    }

    #[test]
    fn an_image_for_another_size_is_refused_before_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0x55u8; 4 * 4096]).unwrap();
        let s = stream(8 * 4096, &[], &[(0, vec![7; 4096])]);
        let e = write_from(&s[..], &dev, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("another size"), "{e}");
        assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 0x55));
    }

    #[test]
    fn a_zero_range_outside_the_image_is_refused_before_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0x55u8; 8 * 4096]).unwrap();
        let s = stream(8 * 4096, &[(7 * 4096, 2 * 4096)], &[(0, vec![7; 4096])]);
        let e = write_from(&s[..], &dev, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, BlockImageError::Stream(_)), "{e}");
        assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 0x55));
    }

    #[test]
    fn a_stream_cut_short_is_an_error_not_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0u8; 8 * 4096]).unwrap();
        let s = stream(8 * 4096, &[(8192, 4096)], &[(0, vec![7; 8192])]);
        let e = write_from(&s[..s.len() - 20], &dev, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, BlockImageError::Read(_)), "{e}");
    }
}
