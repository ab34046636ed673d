//! TFTP and HTTP against real curl, inside namespaces the test makes.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::Duration;

const CLIENT_IP: &str = "10.44.0.50";

fn setup(tag: &str) -> (tempfile::TempDir, Net, Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(tag);
    let config = write_config(
        dir.path(),
        // Undeclared MACs get the install script here: the policy says so.
        "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"off\"\n[install]\nunknown = \"install\"\n",
    );
    // A stand-in kernel with recognisable bytes, so a range can be checked exactly.
    let boot = dir.path().join("state/boot");
    std::fs::create_dir_all(&boot).unwrap();
    let kernel: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(boot.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(boot.join("initramfs.img"), b"initramfs").unwrap();
    let srv = Server::start(&net, &config);
    net.add_static_client(CLIENT_IP);
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
    let (dir, net, srv) = setup("t");
    let want = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap();
    for blksize in ["512", "1468", "8192"] {
        let (ok, body, err) = curl(
            &net,
            &["--tftp-blksize", blksize, "tftp://10.44.0.1/undionly.kpxe"],
        );
        assert!(ok, "blksize {blksize}: {err}");
        assert_eq!(body, want, "blksize {blksize}: file differs");
    }
    // What curl cannot show: the options the server acknowledged and the size of
    // each DATA packet, from a raw client in the client namespace.
    let size = want.len().to_string();
    for (blksize, windowsize) in [(512, 1), (1468, 4), (8192, 8)] {
        let what = format!("blksize {blksize} windowsize {windowsize}");
        let (b, w) = (blksize.to_string(), windowsize.to_string());
        let t = tftp_get(
            &net,
            "undionly.kpxe",
            &[("blksize", &b), ("tsize", "0"), ("windowsize", &w)],
        );
        let oack = t.oack.unwrap_or_else(|| panic!("{what}: no OACK"));
        let expected: BTreeMap<String, String> =
            [("blksize", &b), ("tsize", &size), ("windowsize", &w)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(oack, expected, "{what}: OACK options");
        assert_data_blocks(&t.blocks, blksize, &want, &what);
        assert_eq!(
            t.acks,
            t.blocks.len().div_ceil(windowsize),
            "{what}: one ACK per window"
        );
    }
    // A client asking for a 255 s timeout (to hold a transfer open) is not
    // granted it: the server keeps its own 2 s and leaves the option out.
    let t = tftp_get(&net, "undionly.kpxe", &[("timeout", "255"), ("tsize", "0")]);
    let oack = t.oack.expect("tsize is acknowledged");
    assert_eq!(oack.get("timeout"), None, "{oack:?}");
    assert_eq!(oack.get("tsize"), Some(&size));
    assert_eq!(t.blocks.concat(), want);
    // No options: plain RFC 1350, no OACK and 512-byte blocks.
    let t = tftp_get(&net, "undionly.kpxe", &[]);
    assert!(t.oack.is_none(), "OACK without options: {:?}", t.oack);
    assert_data_blocks(&t.blocks, 512, &want, "no options");

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
    // /metrics counted each transfer by outcome, and the bytes sent.
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let metrics = loop {
        let (ok, body, err) = curl(&net, &["-H", &auth, "http://10.44.0.1/metrics"]);
        assert!(ok, "{err}");
        let text = String::from_utf8(body).unwrap();
        // Eight copies of undionly.kpxe and one of snponly.efi, each counted
        // when the server lets go of the transfer.
        if value(&text, r#"rollout_tftp_transfers_total{outcome="complete"}"#) == 9.0
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let complete = value(
        &metrics,
        r#"rollout_tftp_transfers_total{outcome="complete"}"#,
    );
    assert_eq!(complete, 9.0, "{metrics}");
    let refused = value(
        &metrics,
        r#"rollout_tftp_transfers_total{outcome="refused"}"#,
    );
    assert_eq!(refused, 2.0, "{metrics}");
    let missing = value(
        &metrics,
        r#"rollout_tftp_transfers_total{outcome="not_found"}"#,
    );
    assert_eq!(missing, 1.0, "{metrics}");
    let snponly = std::fs::metadata("/usr/lib/ipxe/snponly.efi")
        .unwrap()
        .len();
    let sent = (8 * want.len() as u64 + snponly) as f64;
    assert_eq!(value(&metrics, "rollout_tftp_sent_bytes_total"), sent);
}

/// What one raw read request got.
struct Transfer {
    /// The OACK's options (names lower-cased), or None when DATA came straight away.
    oack: Option<BTreeMap<String, String>>,
    /// DATA payloads in block order.
    blocks: Vec<Vec<u8>>,
    /// ACKs of DATA blocks the client sent (not counting the ACK of the OACK).
    acks: usize,
}

/// A raw TFTP read of `file` with `options`, from the client namespace. It acknowledges
/// only the last block of each window (RFC 7440), so a server that acknowledged a
/// window size it does not honour stalls the transfer and the test fails.
fn tftp_get(net: &Net, file: &str, options: &[(&str, &str)]) -> Transfer {
    common::netns::in_netns(net.cli.name(), || {
        let sock = UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rrq = vec![0, 1];
        for field in [file, "octet"]
            .into_iter()
            .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
        {
            rrq.extend_from_slice(field.as_bytes());
            rrq.push(0);
        }
        sock.send_to(&rrq, (SERVER_IP, 69)).unwrap();
        let mut buf = vec![0u8; 65536];
        let recv = |buf: &mut [u8], want: &str| {
            sock.recv_from(buf)
                .unwrap_or_else(|e| panic!("{file}: waiting for {want}: {e}"))
        };
        let (n, peer) = recv(&mut buf, "the first reply");
        let opcode = u16::from_be_bytes([buf[0], buf[1]]);
        let mut t = Transfer {
            oack: None,
            blocks: vec![],
            acks: 0,
        };
        let mut pending = None;
        match opcode {
            6 => {
                let fields: Vec<String> = buf[2..n]
                    .split(|&b| b == 0)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                let oack: BTreeMap<String, String> = fields
                    .chunks_exact(2)
                    .map(|kv| (kv[0].to_lowercase(), kv[1].clone()))
                    .collect();
                t.oack = Some(oack);
            }
            3 => pending = Some(buf[..n].to_vec()),
            5 => panic!("{file}: TFTP error {}", String::from_utf8_lossy(&buf[4..n])),
            other => panic!("{file}: unexpected opcode {other}"),
        }
        let opt = |k: &str| {
            t.oack
                .as_ref()
                .and_then(|o| o.get(k))
                .map(|v| v.parse::<usize>().unwrap())
        };
        let blksize = opt("blksize").unwrap_or(512);
        let window = opt("windowsize").unwrap_or(1);
        let ack = |block: u16| {
            let mut a = vec![0, 4];
            a.extend_from_slice(&block.to_be_bytes());
            sock.send_to(&a, peer).unwrap();
        };
        if t.oack.is_some() {
            ack(0);
        }
        let mut in_window = 0;
        loop {
            let packet = match pending.take() {
                Some(p) => p,
                None => {
                    let next = t.blocks.len() + 1;
                    let (n, from) = recv(&mut buf, &format!("block {next}"));
                    assert_eq!(from, peer, "{file}: a packet from another port");
                    buf[..n].to_vec()
                }
            };
            assert_eq!(&packet[..2], &[0, 3], "{file}: expected DATA");
            let block = u16::from_be_bytes([packet[2], packet[3]]);
            let expected = (t.blocks.len() + 1) as u16;
            assert_eq!(
                block, expected,
                "{file}: block {block} arrived when {expected} was due (a resend: the window was not honoured)"
            );
            let last = packet.len() - 4 < blksize;
            t.blocks.push(packet[4..].to_vec());
            in_window += 1;
            if last || in_window == window {
                ack(block);
                t.acks += 1;
                in_window = 0;
            }
            if last {
                return t;
            }
        }
    })
}

/// Every DATA packet but the last carries exactly `blksize` bytes, and together they are `want`.
fn assert_data_blocks(blocks: &[Vec<u8>], blksize: usize, want: &[u8], what: &str) {
    let (last, full) = blocks.split_last().expect("at least one block");
    for (i, b) in full.iter().enumerate() {
        assert_eq!(b.len(), blksize, "{what}: block {} size", i + 1);
    }
    assert!(last.len() < blksize, "{what}: last block is not short");
    assert_eq!(blocks.concat(), want, "{what}: file differs");
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

    // The storage tools archive beside the initramfs, fetched by the installer
    // of a RAID/LVM/XFS layout at /boot/storage-tools.img; gone → 404, which the
    // installer reports with its remedy.
    let tools_img = dir.path().join("state/boot/storage-tools.img");
    let mut a = rollout::cpio::Archive::new();
    a.add_file("usr/sbin/mdadm", 0o755, b"\x7fELF mdadm".to_vec());
    std::fs::write(&tools_img, rollout::bootfiles::gzip(&a.to_bytes())).unwrap();
    let (ok, body, err) = curl(&net, &["-f", "http://10.44.0.1/boot/storage-tools.img"]);
    assert!(ok, "{err}");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut raw).unwrap();
    let got = rollout::cpio::read(&raw).unwrap();
    assert!(got.get("usr/sbin/mdadm").is_some());
    std::fs::remove_file(&tools_img).unwrap();
    let out = net
        .in_cli(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .arg("http://10.44.0.1/boot/storage-tools.img")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}
