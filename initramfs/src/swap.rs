//! Linux swap header (what `mkswap` writes), produced by the installer itself so
//! the initramfs needs no mkswap and the UUID is known without reading it back.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

pub const PAGE_SIZE: usize = 4096;
const SIGNATURE: &[u8; 10] = b"SWAPSPACE2";
const LABEL_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error(
        "swap area of {0} bytes is too small: it needs at least 10 pages of {PAGE_SIZE} bytes"
    )]
    TooSmall(u64),
    #[error("writing the swap header to {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The first page of a swap area of `size_bytes`: the `union swap_header` of
/// include/linux/swap.h (version 1), with `SWAPSPACE2` in the page's last 10 bytes.
pub fn header(size_bytes: u64, uuid: [u8; 16], label: &str) -> Result<[u8; PAGE_SIZE], SwapError> {
    let pages = size_bytes / PAGE_SIZE as u64;
    if pages < 10 {
        return Err(SwapError::TooSmall(size_bytes));
    }
    // last_page is a u32 in the on-disk format; larger areas are clamped, as mkswap does.
    let last_page = u32::try_from(pages - 1).unwrap_or(u32::MAX);
    let mut page = [0u8; PAGE_SIZE];
    // The first 1024 bytes are reserved for boot code and stay zero.
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes()); // version
    page[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    page[1032..1036].copy_from_slice(&0u32.to_le_bytes()); // nr_badpages
    page[1036..1052].copy_from_slice(&uuid);
    let lb = label.as_bytes();
    let n = lb.len().min(LABEL_LEN - 1); // keep a terminating NUL
    page[1052..1052 + n].copy_from_slice(&lb[..n]);
    page[PAGE_SIZE - SIGNATURE.len()..].copy_from_slice(SIGNATURE);
    Ok(page)
}

/// Writes a swap header to the start of `device`, whose size is `size_bytes`.
pub fn write(device: &Path, size_bytes: u64, uuid: [u8; 16], label: &str) -> Result<(), SwapError> {
    let io = |source| SwapError::Io {
        path: device.display().to_string(),
        source,
    };
    let page = header(size_bytes, uuid, label)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&page).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads the UUID back from a swap header (`None` if there is no swap signature).
pub fn parse_uuid(page: &[u8]) -> Option<[u8; 16]> {
    if page.len() < PAGE_SIZE || &page[PAGE_SIZE - SIGNATURE.len()..PAGE_SIZE] != SIGNATURE {
        return None;
    }
    page[1036..1052].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07,
    ];

    #[test]
    fn header_fields_are_at_kernel_offsets() {
        let p = header(2048 * 1024 * 1024, UUID, "rollout-swap").unwrap();
        assert_eq!(&p[4086..], b"SWAPSPACE2");
        assert!(p[..1024].iter().all(|b| *b == 0));
        assert_eq!(u32::from_le_bytes(p[1024..1028].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(p[1028..1032].try_into().unwrap()),
            524_288 - 1
        );
        assert_eq!(&p[1036..1052], &UUID);
        assert_eq!(&p[1052..1064], b"rollout-swap");
        assert_eq!(p[1064], 0);
        assert_eq!(parse_uuid(&p), Some(UUID));
    }

    #[test]
    fn long_labels_are_truncated_with_nul() {
        let p = header(1 << 30, UUID, "a-very-long-swap-label").unwrap();
        assert_eq!(&p[1052..1067], b"a-very-long-swa");
        assert_eq!(p[1067], 0);
    }

    #[test]
    fn partial_pages_are_not_counted_and_tiny_areas_refused() {
        let p = header(40960 + 100, UUID, "").unwrap();
        assert_eq!(u32::from_le_bytes(p[1028..1032].try_into().unwrap()), 9);
        assert!(matches!(
            header(4096 * 9, UUID, ""),
            Err(SwapError::TooSmall(_))
        ));
        assert_eq!(parse_uuid(&[0u8; PAGE_SIZE]), None);
    }
}
