//! What an rsync build can do, read from `rsync --version`, and the flags of a
//! first install chosen from it. Shared by the server (which tells the
//! installer its daemon's checksums in the plan) and the installer.

/// The fast transfer checksums, best first: an install onto an empty disk
/// has no basis files, so the checksum only verifies each file once it has
/// arrived, and a non-cryptographic one does that at memory speed.
pub const FAST_CHECKSUMS: &[&str] = &["xxh128", "xxh3", "xxh64"];

/// The names under "Checksum list:" in `rsync --version` output (rsync ≥
/// 3.2.0), e.g. `xxh128 xxh3 xxh64 (xxhash) md5 md4 none`; empty for an
/// older rsync, which has no choice to make.
pub fn checksum_list(version_text: &str) -> Vec<String> {
    let mut lines = version_text.lines();
    let mut out = Vec::new();
    while let Some(l) = lines.next() {
        if l.trim() != "Checksum list:" {
            continue;
        }
        for next in lines.by_ref() {
            // The list's lines are indented; the next heading is not.
            if !next.starts_with(' ') || next.trim().ends_with(':') {
                break;
            }
            out.extend(
                next.split_whitespace()
                    .filter(|w| !w.starts_with('('))
                    .map(String::from),
            );
        }
        break;
    }
    out
}

/// The first of [`FAST_CHECKSUMS`] that both lists have; `None` when either
/// end lacks them all (then rsync negotiates or uses its default).
pub fn first_install_checksum(server: &[String], local: &[String]) -> Option<&'static str> {
    FAST_CHECKSUMS
        .iter()
        .copied()
        .find(|c| server.iter().any(|s| s == c) && local.iter().any(|l| l == c))
}

/// Extra rsync flags for a copy onto an empty target: no delta algorithm
/// (there is nothing to compare against, and a retried attempt's partial
/// files are cheaper to send again than to checksum block by block), no
/// compression (the image crosses a LAN: compressing costs the server more
/// CPU than the wire saves), and a fast checksum both ends have.
pub fn first_install_flags(server: &[String], local: &[String]) -> Vec<String> {
    let mut f = vec!["--whole-file".to_string(), "--no-compress".to_string()];
    if let Some(c) = first_install_checksum(server, local) {
        f.push(format!("--checksum-choice={c}"));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const V327: &str = "rsync  version 3.2.7  protocol version 31
Capabilities:
    64-bit files, 64-bit inums, 64-bit timestamps, 64-bit long ints,
    no crtimes
Optimizations:
    SIMD-roll, no asm-roll, openssl-crypto, no asm-MD5
Checksum list:
    xxh128 xxh3 xxh64 (xxhash) md5 md4 sha1 none
Compress list:
    zstd lz4 zlibx zlib none
Daemon auth list:
    sha512 sha256 sha1 md5 md4
";

    const V31: &str = "rsync  version 3.1.3  protocol version 31
Capabilities:
    64-bit files, 64-bit inums, 64-bit timestamps, 64-bit long ints,
    socketpairs, hardlinks, symlinks, IPv6, batchfiles, inplace,
";

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_the_checksum_list_and_nothing_else() {
        assert_eq!(
            checksum_list(V327),
            v(&["xxh128", "xxh3", "xxh64", "md5", "md4", "sha1", "none"])
        );
        assert!(checksum_list(V31).is_empty());
        assert!(checksum_list("").is_empty());
    }

    #[test]
    fn picks_the_best_fast_checksum_both_ends_have() {
        let new = checksum_list(V327);
        assert_eq!(first_install_checksum(&new, &new), Some("xxh128"));
        assert_eq!(
            first_install_checksum(&v(&["xxh64", "md5"]), &new),
            Some("xxh64")
        );
        assert_eq!(first_install_checksum(&new, &v(&["md5", "md4"])), None);
        assert_eq!(first_install_checksum(&[], &new), None);
    }

    #[test]
    fn first_install_flags_skip_delta_and_compression() {
        let new = checksum_list(V327);
        assert_eq!(
            first_install_flags(&new, &new),
            ["--whole-file", "--no-compress", "--checksum-choice=xxh128"]
        );
        assert_eq!(
            first_install_flags(&[], &new),
            ["--whole-file", "--no-compress"]
        );
    }
}
