//! Tests of the block image builder: mke2fs arguments, cache keys, dumpe2fs
//! parsing and zero ranges.

use super::*;

#[test]
fn the_image_is_made_with_the_installers_mke2fs_arguments() {
    let a = mke2fs_args(Fs::Ext3).unwrap().join(" ");
    assert!(
        a.contains("-t ext3 -O has_journal,^extent,^64bit,^metadata_csum"),
        "{a}"
    );
    assert!(!mke2fs_args(Fs::Ext4).unwrap().join(" ").contains("-O"));
    assert!(mke2fs_args(Fs::Xfs).is_err());
    assert!(check_size(1 << 30).is_ok());
    assert!(check_size((1 << 30) + 512).is_err());
    assert!(check_size(1 << 20).is_err());
}

#[test]
fn a_changed_exclude_list_or_size_is_another_image() {
    let at =
        |ex: &str, bytes| cache_path(Path::new("/s"), "default", 3, Fs::Ext3, bytes, &[ex.into()]);
    assert_ne!(at("/tmp/*", 1 << 30), at("/var/*", 1 << 30));
    assert_ne!(at("/tmp/*", 1 << 30), at("/tmp/*", 2 << 30));
    let a = at("/tmp/*", 1 << 30);
    assert!(a.starts_with("/s/cache/block/default"));
    assert!(a
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("3-ext3-1073741824-"));
}

#[test]
fn the_cache_drops_pruned_serials_and_the_oldest_past_its_limit() {
    let state = tempfile::tempdir().unwrap();
    let dir = cache_dir(state.path(), "default");
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..MAX_CACHED as u64 + 3 {
        let f = File::create(dir.join(format!("2-ext3-{}-tag.img", (i + 16) << 20))).unwrap();
        f.set_modified(t0 + std::time::Duration::from_secs(i))
            .unwrap();
    }
    File::create(dir.join("1-ext3-1073741824-tag.img")).unwrap();
    forget_pruned(state.path(), "default", &[2]);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), MAX_CACHED, "{left:?}");
    assert!(
        !left.iter().any(|n| n.starts_with("1-")),
        "serial 1 was pruned"
    );
    // The three oldest (16, 17 and 18 MiB) went.
    for gone in [16u64, 17, 18] {
        assert!(!left.contains(&format!("2-ext3-{}-tag.img", gone << 20)));
    }
}

#[test]
fn dumpe2fs_group_lines_give_the_metadata_blocks() {
    let dump = "Group 0: (Blocks 0-32767)\n  Primary superblock at 0, Group descriptors at 1-1\n  Reserved GDT blocks at 2-64\n  Block bitmap at 65 (+65), csum 0xf2122918\n  Inode bitmap at 66 (+66)\n  Inode table at 67-578 (+67)\n  23980 free blocks, 8178 free inodes, 3 directories\n  Free blocks: 8788-32767\n  Free inodes: 15-8192\n";
    let b = group_metadata_blocks(dump);
    assert_eq!(
        b,
        vec![(0, 0), (1, 1), (2, 64), (65, 65), (66, 66), (67, 578)]
    );
    let r = to_byte_ranges(b, 4096);
    assert_eq!(
        r,
        vec![Extent {
            offset: 0,
            len: 579 * 4096
        }]
    );
}

#[test]
fn only_metadata_in_holes_is_zeroed_whole_blocks_at_a_time() {
    let e = |offset, len| Extent { offset, len };
    // A hole of 16 blocks; metadata half in it, 1 KiB aligned, and some
    // metadata in data (sent, never zeroed).
    let holes = [e(4 * 4096, 16 * 4096)];
    let meta = [
        e(0, 5 * 4096),
        e(10 * 4096 + 1024, 2048),
        e(30 * 4096, 4096),
    ];
    assert_eq!(
        zero_ranges(&holes, &meta),
        vec![e(4 * 4096, 4096), e(10 * 4096, 4096)]
    );
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
    let f = File::open(&p).unwrap();
    let img = BlockImage {
        path: p.clone(),
        image_bytes: 64 * 4096,
        extents: allocated(&f, 64 * 4096).unwrap(),
        zero: vec![Extent {
            offset: 0,
            len: 4096,
        }],
    };
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
