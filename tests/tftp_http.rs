//! TFTP and HTTP against real curl, inside namespaces the test makes.

mod common;
use common::*;

fn setup(tag: &str) -> (tempfile::TempDir, Net, Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(tag);
    let config = write_config(
        dir.path(),
        "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"off\"\n",
    );
    // A stand-in kernel with recognisable bytes, so a range can be checked exactly.
    let boot = dir.path().join("state/boot");
    std::fs::create_dir_all(&boot).unwrap();
    let kernel: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(boot.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(boot.join("initramfs.img"), b"initramfs").unwrap();
    let srv = Server::start(&net, &config);
    net.add_static_client("10.44.0.50");
    (dir, net, srv)
}

fn curl(net: &Net, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = net
        .in_cli(&["curl", "-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tftp_serves_ipxe_with_large_blksize_and_refuses_escapes() {
    if !can_run(&["curl"]) {
        return;
    }
    let (_dir, net, srv) = setup("t");
    let want = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap();
    for blksize in ["512", "1468", "8192"] {
        let (ok, body, err) = curl(
            &net,
            &["--tftp-blksize", blksize, "tftp://10.44.0.1/undionly.kpxe"],
        );
        assert!(ok, "blksize {blksize}: {err}");
        assert_eq!(body, want, "blksize {blksize}: file differs");
    }
    let (ok, body, _) = curl(&net, &["tftp://10.44.0.1/snponly.efi"]);
    assert!(ok && body == std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap());

    for escape in [
        "tftp://10.44.0.1/../../etc/passwd",
        "tftp://10.44.0.1//etc/passwd",
    ] {
        let out = net
            .in_cli(&["curl", "-sS", "--max-time", "20", "--path-as-is", escape])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "{escape} was served");
        // curl's exit code 69 is CURLE_TFTP_PERM: the server sent "access violation".
        assert_eq!(
            out.status.code(),
            Some(69),
            "{escape}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = net
        .in_cli(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "tftp://10.44.0.1/nosuchfile",
        ])
        .output()
        .unwrap();
    // 68 is CURLE_TFTP_NOTFOUND.
    assert_eq!(out.status.code(), Some(68));
    assert!(srv
        .log_text()
        .contains("refused: path leaves the TFTP root"));
}

#[test]
fn http_serves_ipxe_scripts_kernel_ranges_and_health() {
    if !can_run(&["curl"]) {
        return;
    }
    let (dir, net, srv) = setup("h");
    let (ok, body, _) = curl(&net, &["-f", "http://10.44.0.1/healthz"]);
    assert!(ok && body == b"ok\n");

    // No MAC: a chain script that makes iPXE ask again with its MAC and platform.
    let (_, body, _) = curl(&net, &["-f", "http://10.44.0.1/boot.ipxe"]);
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("chain http://10.44.0.1/boot.ipxe?mac=${netX/mac}&platform=${platform}"),
        "{body}"
    );

    let (_, body, _) = curl(
        &net,
        &[
            "-f",
            "http://10.44.0.1/boot.ipxe?mac=52-54-00-12-34-56&platform=efi",
        ],
    );
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("#!ipxe"));
    assert!(
        body.contains(
            "initrd=initramfs.img rollout.server=http://10.44.0.1 rollout.mac=52:54:00:12:34:56"
        ),
        "{body}"
    );
    let (ok, _, _) = curl(&net, &["-f", "http://10.44.0.1/boot.ipxe?mac=nonsense"]);
    assert!(!ok, "a malformed MAC must be a 400");

    let kernel = std::fs::read(dir.path().join("state/boot/vmlinuz")).unwrap();
    let (ok, body, _) = curl(
        &net,
        &["-f", "-r", "1000-1999", "http://10.44.0.1/boot/vmlinuz"],
    );
    assert!(ok);
    assert_eq!(body, &kernel[1000..2000]);
    let (_, head, _) = curl(&net, &["-fsI", "http://10.44.0.1/boot/vmlinuz"]);
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", kernel.len())),
        "{head}"
    );
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let (ok, body, _) = curl(&net, &["-f", "http://10.44.0.1/boot/vmlinuz"]);
    assert!(ok && body == kernel);
    let (ok, _, _) = curl(
        &net,
        &["-f", "--path-as-is", "http://10.44.0.1/boot/../rollout.db"],
    );
    assert!(!ok, "HTTP must not serve outside the boot directory");
    assert!(srv.log_text().contains("boot.ipxe → installer"));
}
