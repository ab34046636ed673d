//! Shared test fixtures.

use rollout::wire::*;

pub fn plan() -> InstallPlan {
    InstallPlan {
        install_id: "inst-1".into(),
        token: "tok".into(),
        mac: "52:54:00:00:00:01".into(),
        hostname: "node\"1\\".into(),
        server_url: "http://10.44.0.1:8080".into(),
        network: NetworkPlan::Dhcp,
        link: Default::default(),
        image: ImageRef {
            name: "default".into(),
            serial: 7,
            rsync_url: "rsync://10.44.0.1/default-7/".into(),
            rsync_checksums: vec![],
            sparse_files: None,
        },
        disk: DiskSelector::default(),
        layout: Layout::default(),
        bootloader: Bootloader::Auto,
        excludes: vec!["/etc/ssh/ssh_host_*".into()],
        files: vec![FileSpec {
            path: "/etc/motd".into(),
            mode: 0o640,
            contents: "hello\n".into(),
        }],
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA rollout-server".into()],
        kernel_cmdline: "console=ttyS0,115200".into(),
        sync_interval_secs: 0,
        keep_identity: true,
        multicast: None,
        tar_prefill: false,
        block_image: false,
        on_failure: FailurePolicy::default(),
        rsync: RsyncCredential {
            user: "install-525400000001".into(),
            password: "installpw".into(),
        },
        node: NodeCredential {
            secret: "nodesecret".into(),
            rsync: RsyncCredential {
                user: "node-525400000001".into(),
                password: "noderspw".into(),
            },
        },
    }
}

/// A stand-in for the server's events endpoint: answers 200 to every request
/// and keeps the posted events, in order.
pub struct EventSink {
    pub url: String,
    rx: std::sync::mpsc::Receiver<ProgressEvent>,
}

impl EventSink {
    pub fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                let body = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                };
                // The event is queued before the answer, so it is visible once
                // the installer's post returns.
                if let Some(ev) = body.and_then(|b| serde_json::from_slice(&b).ok()) {
                    let _ = tx.send(ev);
                }
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        EventSink { url, rx }
    }

    /// The events posted since the last call.
    pub fn take(&self) -> Vec<ProgressEvent> {
        self.rx.try_iter().collect()
    }
}
