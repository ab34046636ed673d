//! The block image of a serial (`[install] block_image`): its root filesystem
//! made on the server by `mke2fs -d` with the installer's own arguments, at
//! the size of the node's root device, and sent to each installing node as
//! the filesystem's allocated blocks, which the node writes straight onto its
//! root device. One sequential write instead of a file-by-file copy.
//!
//! The stream (`GET /api/v1/installs/{id}/root.img?fs=ext3&bytes=N`), little endian:
//!
//! ```text
//! header   "RLBLKIMG" u32 version u32 align u64 image_bytes u64 extents
//!          u64 data_bytes (the extents' lengths summed, for progress)
//!          u64 zero_ranges
//! zero     u64 offset u64 len                          (repeated `zero_ranges` times)
//! extent   u64 offset u64 len, then len bytes          (repeated `extents` times)
//! trailer  "RLBLKEND" u64 xxh3-64 of the zero list and every extent's bytes, in order
//! ```
//!
//! Extents are the image's allocated blocks, aligned, in increasing order.
//! The zero ranges are the metadata blocks the image leaves as holes (inode
//! tables, bitmaps, the journal): the node zeroes them, as mke2fs would, so
//! nothing a previous install left there reads back as an inode or a journal
//! transaction. Free blocks are left as they are, as mke2fs leaves them.

use super::layout::Fs;

pub const MAGIC: &[u8; 8] = b"RLBLKIMG";
pub const END_MAGIC: &[u8; 8] = b"RLBLKEND";
pub const VERSION: u32 = 2;
/// The alignment of every extent and range (what O_DIRECT writes need).
pub const BLOCK: u32 = 4096;
pub const HEADER_LEN: usize = 48;
pub const EXTENT_HEAD_LEN: usize = 16;
pub const TRAILER_LEN: usize = 16;

/// ext features both ends make: the installer's `mke2fs` on a fresh root and
/// the server's block image. ext3 stays classic (no extents) so older kernels
/// and tools can read it; explicit so no mke2fs.conf can sneak extents in.
pub fn ext_features(fs: Fs) -> Option<&'static str> {
    match fs {
        Fs::Ext3 => Some("has_journal,^extent,^64bit,^metadata_csum"),
        Fs::Ext4 | Fs::Xfs => None,
    }
}

/// mke2fs's arguments before the device, the same on both ends, so a block
/// image is the filesystem the node's own mke2fs would make: `-F` because
/// the target is fresh and may hold old data; ext labels hold 16 bytes.
pub fn mke2fs_args(fs: Fs, label: &str) -> Vec<String> {
    let mut args = vec!["-F".into(), "-q".into(), "-t".into(), fs.as_str().into()];
    if let Some(features) = ext_features(fs) {
        args.extend(["-O".into(), features.into()]);
    }
    args.extend(["-L".into(), label.chars().take(16).collect()]);
    args
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub image_bytes: u64,
    pub extents: u64,
    pub data_bytes: u64,
    pub zero_ranges: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("not a rollout block image (magic {0:?})")]
    Magic(String),
    #[error("block image version {0}, this installer reads {VERSION}")]
    Version(u32),
    #[error("block image blocks of {0} bytes, this installer writes {BLOCK}")]
    BlockSize(u32),
    #[error("extent {offset}+{len} is not {BLOCK}-byte aligned")]
    Unaligned { offset: u64, len: u64 },
    #[error("extent {offset}+{len} overlaps the previous one or lies past the image's {image_bytes} bytes")]
    OutOfOrder {
        offset: u64,
        len: u64,
        image_bytes: u64,
    },
    #[error("the stream's end marker is missing")]
    Trailer,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&BLOCK.to_le_bytes());
        b[16..24].copy_from_slice(&self.image_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.extents.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_bytes.to_le_bytes());
        b[40..48].copy_from_slice(&self.zero_ranges.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, StreamError> {
        if &b[..8] != MAGIC {
            return Err(StreamError::Magic(
                String::from_utf8_lossy(&b[..8]).into_owned(),
            ));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        let block = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if block != BLOCK {
            return Err(StreamError::BlockSize(block));
        }
        let image_bytes = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        if image_bytes % u64::from(BLOCK) != 0 {
            return Err(StreamError::Unaligned {
                offset: 0,
                len: image_bytes,
            });
        }
        Ok(Header {
            image_bytes,
            extents: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            data_bytes: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
            zero_ranges: u64::from_le_bytes(b[40..48].try_into().expect("8 bytes")),
        })
    }
}

impl Extent {
    pub fn encode(&self) -> [u8; EXTENT_HEAD_LEN] {
        let mut b = [0u8; EXTENT_HEAD_LEN];
        b[..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// The extent after one ending at `previous_end`: aligned, in order, and
    /// inside the image, or the stream is refused before a byte is written.
    pub fn decode(
        b: &[u8; EXTENT_HEAD_LEN],
        previous_end: u64,
        image_bytes: u64,
    ) -> Result<Extent, StreamError> {
        let offset = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
        let block = u64::from(BLOCK);
        if offset % block != 0 || len % block != 0 || len == 0 {
            return Err(StreamError::Unaligned { offset, len });
        }
        match offset.checked_add(len) {
            Some(end) if offset >= previous_end && end <= image_bytes => Ok(Extent { offset, len }),
            _ => Err(StreamError::OutOfOrder {
                offset,
                len,
                image_bytes,
            }),
        }
    }
}

pub fn encode_trailer(hash: u64) -> [u8; TRAILER_LEN] {
    let mut b = [0u8; TRAILER_LEN];
    b[..8].copy_from_slice(END_MAGIC);
    b[8..].copy_from_slice(&hash.to_le_bytes());
    b
}

/// The xxh3-64 the trailer carries (rsync's own fast checksum; cheap even
/// on an emulated CPU, where a table-driven crc32 costs more than the disk).
pub fn decode_trailer(b: &[u8; TRAILER_LEN]) -> Result<u64, StreamError> {
    if &b[..8] != END_MAGIC {
        return Err(StreamError::Trailer);
    }
    Ok(u64::from_le_bytes(b[8..].try_into().expect("8 bytes")))
}

/// The ranges of `0..image_bytes` no extent covers.
pub fn holes(extents: &[Extent], image_bytes: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut at = 0;
    for e in extents {
        if e.offset > at {
            out.push(Extent {
                offset: at,
                len: e.offset - at,
            });
        }
        at = at.max(e.offset + e.len);
    }
    if image_bytes > at {
        out.push(Extent {
            offset: at,
            len: image_bytes - at,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_extent_and_trailer_read_back() {
        let h = Header {
            image_bytes: 64 * 4096,
            extents: 2,
            data_bytes: 3 * 4096,
            zero_ranges: 1,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let e = Extent {
            offset: 4096,
            len: 8192,
        };
        assert_eq!(Extent::decode(&e.encode(), 0, h.image_bytes), Ok(e));
        assert_eq!(
            decode_trailer(&encode_trailer(0xdead_beef)),
            Ok(0xdead_beef)
        );
    }

    #[test]
    fn a_stream_that_is_not_a_block_image_is_refused() {
        let mut b = Header {
            image_bytes: 4096,
            extents: 1,
            data_bytes: 4096,
            zero_ranges: 0,
        }
        .encode();
        b[0] = b'<';
        assert!(matches!(Header::decode(&b), Err(StreamError::Magic(_))));
        let mut b = Header {
            image_bytes: 4096,
            extents: 1,
            data_bytes: 4096,
            zero_ranges: 0,
        }
        .encode();
        b[8] = 9;
        assert_eq!(Header::decode(&b), Err(StreamError::Version(9)));
        assert_eq!(decode_trailer(&[0; TRAILER_LEN]), Err(StreamError::Trailer));
    }

    /// A hostile or broken server must not make the node write outside the
    /// image, backwards over what it wrote, or in pieces O_DIRECT refuses.
    #[test]
    fn extents_outside_the_image_out_of_order_or_unaligned_are_refused() {
        let size = 16 * 4096;
        let at = |offset, len| Extent { offset, len }.encode();
        assert!(matches!(
            Extent::decode(&at(100, 4096), 0, size),
            Err(StreamError::Unaligned { .. })
        ));
        assert!(matches!(
            Extent::decode(&at(0, 0), 0, size),
            Err(StreamError::Unaligned { .. })
        ));
        assert!(matches!(
            Extent::decode(&at(15 * 4096, 8192), 0, size),
            Err(StreamError::OutOfOrder { .. })
        ));
        assert!(matches!(
            Extent::decode(&at(4096, 4096), 8192, size),
            Err(StreamError::OutOfOrder { .. })
        ));
        assert!(matches!(
            Extent::decode(&at(u64::MAX - 4095, 4096), 0, size),
            Err(StreamError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn holes_are_what_no_extent_covers() {
        let e = |offset, len| Extent { offset, len };
        assert_eq!(holes(&[], 8192), vec![e(0, 8192)]);
        assert_eq!(
            holes(&[e(4096, 4096), e(12288, 4096)], 20480),
            vec![e(0, 4096), e(8192, 4096), e(16384, 4096)]
        );
        assert_eq!(holes(&[e(0, 8192)], 8192), vec![]);
    }
}
