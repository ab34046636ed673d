//! `GET /api/v1/installs/{id}/root.img` on a real `rollout serve` (loopback,
//! DHCP off): with `[install] block_image` the install's own token (only it)
//! gets the serial's root as a block image stream for the size it names; the
//! stream, laid out onto an "old disk" as the installer lays it onto the root
//! device, is an ext3 filesystem of that size with a journal that e2fsck
//! passes, holding the serial's files (hard links and symlinks kept) without
//! the image's excludes. Without the option the route refuses and says why.

mod common;
use common::loopback::{stream_test_serial, write_config_with_install, Server};
use rollout::wire::block_image::{self as wire, Extent, Header};
use serde_json::Value;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

/// The stream written out as the installer writes it onto a disk that held
/// something else (extents at their offsets, the zero ranges zeroed, free
/// blocks left as they were), its checksum checked.
fn lay_out(stream: &[u8], file: &Path) -> u64 {
    let header = Header::decode(stream[..wire::HEADER_LEN].try_into().unwrap()).unwrap();
    std::fs::write(file, vec![0xA5u8; header.image_bytes as usize]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let mut at = wire::HEADER_LEN;
    let mut end = 0;
    let mut crc = xxhash_rust::xxh3::Xxh3::new();
    let mut zero = Vec::new();
    for _ in 0..header.zero_ranges {
        let head: &[u8; wire::EXTENT_HEAD_LEN] =
            stream[at..at + wire::EXTENT_HEAD_LEN].try_into().unwrap();
        crc.update(head);
        let z = Extent::decode(head, end, header.image_bytes).unwrap();
        end = z.offset + z.len;
        zero.push(z);
        at += wire::EXTENT_HEAD_LEN;
    }
    let mut end = 0;
    for _ in 0..header.extents {
        let head = stream[at..at + wire::EXTENT_HEAD_LEN].try_into().unwrap();
        let e = Extent::decode(head, end, header.image_bytes).unwrap();
        at += wire::EXTENT_HEAD_LEN;
        let data = &stream[at..at + e.len as usize];
        crc.update(data);
        f.write_all_at(data, e.offset).unwrap();
        at += e.len as usize;
        end = e.offset + e.len;
    }
    let want = wire::decode_trailer(stream[at..].try_into().unwrap()).unwrap();
    assert_eq!(crc.digest(), want, "the stream's xxh3");
    for z in zero {
        f.write_all_at(&vec![0u8; z.len as usize], z.offset)
            .unwrap();
    }
    header.image_bytes
}

fn debugfs(img: &Path, request: &str) -> (bool, String) {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("not found"), text)
}

#[test]
fn the_install_token_gets_the_serials_root_as_a_checked_ext3_image() {
    let dir = tempfile::tempdir().unwrap();
    write_config_with_install(dir.path(), "block_image = true");
    let big = stream_test_serial(dir.path());
    let root = dir.path().join("state/images/default/serials/1/root");
    std::fs::hard_link(root.join("usr/lib/big.so"), root.join("usr/lib/big.so.1")).unwrap();
    let s = Server::start(dir.path());

    let (st, plan) = s.plan("52:54:00:00:00:01");
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["block_image"], Value::Bool(true), "{plan}");
    let id = plan["install_id"].as_str().unwrap();
    let bearer = format!("Bearer {}", plan["token"].as_str().unwrap());
    const SIZE: u64 = 256 << 20;
    let path = format!("/api/v1/installs/{id}/root.img?fs=ext3&bytes={SIZE}");

    assert_eq!(s.get_bytes(&path, None).0, 401);
    assert_eq!(s.get_bytes(&path, Some("Bearer not-the-token")).0, 403);
    let (st, body) = s.get_bytes(
        &format!("/api/v1/installs/{id}/root.img?fs=xfs"),
        Some(&bearer),
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));

    let (st, stream) = s.get_bytes(&path, Some(&bearer));
    assert_eq!(
        st,
        200,
        "{}",
        String::from_utf8_lossy(&stream[..stream.len().min(300)])
    );
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("root.img");
    let image_bytes = lay_out(&stream, &img);
    assert_eq!(image_bytes, SIZE, "the image is for the size asked");
    // Only the allocated blocks travel, not the 256 MiB.
    assert!(stream.len() < 32 << 20, "{} bytes sent", stream.len());
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let (_, features) = debugfs(&img, "features");
    assert!(
        !features.contains("extent"),
        "ext3 has no extents: {features}"
    );
    assert!(features.contains("has_journal"), "{features}");

    let copy = out.path().join("big.so");
    let (ok, said) = debugfs(&img, &format!("dump /usr/lib/big.so {}", copy.display()));
    assert!(ok, "{said}");
    assert_eq!(std::fs::read(&copy).unwrap(), big);
    let (_, stat) = debugfs(&img, "stat /usr/lib/big.so.1");
    assert!(
        stat.contains("Links: 2"),
        "the hard link became a copy: {stat}"
    );
    let (_, link) = debugfs(&img, "stat /usr/big");
    assert!(link.contains("lib/big.so"), "{link}");
    let (found, _) = debugfs(&img, "stat /var/lib/site/secret");
    assert!(
        !found,
        "the image's exclude /var/lib/site/ is in the block image"
    );

    // Made once per size: a second install of the serial gets the same
    // file; the plan already had the layout's 1 GiB root made ahead.
    let cache = dir.path().join("state/cache/block/default");
    let made = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".img"))
            .collect();
        v.sort();
        v
    };
    let asked = std::time::Instant::now();
    let mut names = made();
    while names.len() < 2 && asked.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        names = made();
    }
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("1-ext3-1073741824-"), "{names:?}");
    assert!(
        names[1].starts_with(&format!("1-ext3-{SIZE}-")),
        "{names:?}"
    );
    let inode = |n: &str| std::fs::metadata(cache.join(n)).unwrap().ino();
    let before = inode(&names[1]);
    let (st, again) = s.get_bytes(&path, Some(&bearer));
    assert_eq!((st, again.len()), (200, stream.len()));
    assert_eq!(inode(&names[1]), before, "the image was made again");
}

#[test]
fn without_block_image_the_plan_offers_none_and_the_route_says_why() {
    let dir = tempfile::tempdir().unwrap();
    Server::start(dir.path()).assert_install_route_off("block_image", "root.img?fs=ext3");
}
