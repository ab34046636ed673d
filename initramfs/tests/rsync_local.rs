//! `rsync::copy` with the real rsync binary between two local directories: the
//! flags are accepted, excludes apply, progress2 output is parsed, and a failed
//! attempt is retried without sending again what is already there.

use std::path::Path;
use std::time::Duration;

use rollout_installer::{paths, rsync};
use testkit::prereq;

#[test]
fn copies_tree_with_excludes_and_reports_progress() {
    if !prereq::require_file(paths::RSYNC, "rsync") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("etc/ssh")).unwrap();
    std::fs::write(src.path().join("etc/hostname"), "golden\n").unwrap();
    std::fs::write(src.path().join("etc/ssh/ssh_host_rsa_key"), "secret").unwrap();
    std::fs::write(src.path().join("big"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("etc/hostname", src.path().join("link")).unwrap();
    let mut seen = Vec::new();
    let last = rsync::copy(
        &src.path().to_string_lossy(),
        None,
        &dst.path().to_string_lossy(),
        &["/etc/ssh/ssh_host_*".into()],
        1,
        Duration::ZERO,
        |p| seen.push(p),
        |_, why| panic!("retry: {why}"),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dst.path().join("etc/hostname")).unwrap(),
        "golden\n"
    );
    assert_eq!(
        std::fs::read_link(dst.path().join("link")).unwrap(),
        Path::new("etc/hostname")
    );
    assert!(
        !dst.path().join("etc/ssh/ssh_host_rsa_key").exists(),
        "exclude ignored"
    );
    assert!(!seen.is_empty(), "no progress2 line parsed");
    assert_eq!(last.percent, 100);
    assert!(last.bytes >= 3 << 20, "{last:?}");
}

#[test]
fn failure_is_reported_after_the_attempts() {
    if !prereq::require_file(paths::RSYNC, "rsync") {
        return;
    }
    let dst = tempfile::tempdir().unwrap();
    let mut retries = 0;
    let err = rsync::copy(
        "/nonexistent-rollout-src",
        None,
        &dst.path().to_string_lossy(),
        &[],
        2,
        Duration::ZERO,
        |_| {},
        |_, _| retries += 1,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(retries, 1);
    assert!(
        err.contains("failed 2 times") && err.contains("nonexistent-rollout-src"),
        "{err}"
    );
}

/// An interrupted copy is retried and resumes: what the first attempt already
/// put on the disk is not sent again.
#[test]
fn interrupted_copy_is_retried_and_resumes() {
    if !prereq::require_file(paths::RSYNC, "rsync") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let src = base.path().join("image");
    let dst = tempfile::tempdir().unwrap();
    // The first attempt got as far as `a` before the server went away.
    std::fs::write(dst.path().join("a"), vec![1u8; 2 << 20]).unwrap();
    let mut retries = 0;
    let outcome = rsync::copy_with(
        &src.to_string_lossy(),
        None,
        &dst.path().to_string_lossy(),
        &[],
        &["--stats"],
        3,
        Duration::ZERO,
        |_| {},
        |_, _| {
            // The server is back (with the image) for the next attempt.
            retries += 1;
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("a"), vec![1u8; 2 << 20]).unwrap();
            std::fs::write(src.join("b"), vec![2u8; 1 << 20]).unwrap();
            // rsync -a had given the first attempt's copy the source's times.
            let t = std::fs::metadata(src.join("a"))
                .unwrap()
                .modified()
                .unwrap();
            let a = std::fs::File::options()
                .write(true)
                .open(dst.path().join("a"))
                .unwrap();
            a.set_modified(t).unwrap();
        },
    )
    .unwrap();
    assert_eq!(retries, 1);
    assert_eq!(
        std::fs::read(dst.path().join("b")).unwrap(),
        vec![2u8; 1 << 20]
    );
    let sent: u64 = outcome
        .lines
        .iter()
        .rev() // the successful attempt's stats come last
        .find_map(|l| l.strip_prefix("Total transferred file size: "))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.replace(',', "").parse().unwrap())
        .expect("rsync --stats output");
    assert_eq!(sent, 1 << 20, "only the missing file is sent again");
}
