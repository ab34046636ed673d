//! The HTTP first-install prefill (`[install] tar_prefill` on the server):
//! the serial's tree as one tar stream from `GET …/image.tar`, unpacked onto
//! the empty root, before the rsync copy. One TCP stream written straight to
//! files costs the node far less than rsync's per-file protocol and
//! checksums; the rsync that follows compares sizes and times, sends what
//! the stream missed and fixes what tar cannot carry (xattrs, ACLs, device
//! nodes). A stream that fails half-way is removed again: it costs a bigger
//! rsync, never the install.

use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use rollout::wire::{paths as wire_paths, InstallPlan};

use crate::http_client;

/// How long the stream may stall before the installer gives up on it.
const STALL: Duration = Duration::from_secs(30);

pub fn image_tar_url(server: &str, install_id: &str) -> String {
    format!(
        "{}{}/{install_id}/image.tar",
        server.trim_end_matches('/'),
        wire_paths::INSTALLS
    )
}

/// Counts what passes.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Streams and unpacks the image under `root`; the bytes read. On an error
/// whatever arrived is removed again (the caller's rsync copies everything).
pub fn prefill(plan: &InstallPlan, root: &Path) -> Result<(u64, Duration), String> {
    let url = image_tar_url(&plan.server_url, &plan.install_id);
    let started = Instant::now();
    let got = http_client::get_stream(&url, &plan.token, STALL)
        .map_err(|e| format!("GET {url}: {e}"))
        .and_then(|body| {
            let mut body = Counting {
                inner: body,
                bytes: 0,
            };
            crate::unpack::unpack_tar(&mut body, root, &plan.layout.network_paths())?;
            // tar pads its archive past the end marker: read it, so the
            // server sees the whole body taken.
            io::copy(&mut body, &mut io::sink()).map_err(|e| format!("reading {url}: {e}"))?;
            Ok(body.bytes)
        });
    match got {
        Ok(bytes) => Ok((bytes, started.elapsed())),
        Err(why) => match crate::unpack::clear(root) {
            Ok(()) => Err(why),
            Err(e) => Err(format!("{why}; clearing the new root failed too: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A server that answers one request with `head` and `body`; returns its
    /// URL base and the request it got.
    fn one_shot(head: &'static str, body: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut b).unwrap();
                req.extend_from_slice(&b[..n]);
            }
            c.write_all(head.as_bytes()).unwrap();
            // In pieces, as a network delivers it.
            for part in body.chunks(700) {
                c.write_all(part).unwrap();
            }
            String::from_utf8_lossy(&req).into_owned()
        });
        (base, h)
    }

    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![7u8; 100_000];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, "etc/big", &data[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        l.set_uid(0);
        l.set_gid(0);
        l.set_cksum();
        b.append_link(&mut l, "etc/link", "big").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn the_stream_is_unpacked_with_the_install_token() {
        let (base, server) = one_shot(
            "HTTP/1.0 200 OK\r\nContent-Type: application/x-tar\r\n\r\n",
            archive(),
        );
        let mut plan = crate::testutil::plan();
        plan.server_url = base;
        let root = tempfile::tempdir().unwrap();
        let (bytes, _) = prefill(&plan, root.path()).unwrap();
        let req = server.join().unwrap();
        assert!(
            req.starts_with(&format!(
                "GET /api/v1/installs/{}/image.tar HTTP/1.0\r\n",
                plan.install_id
            )),
            "{req}"
        );
        assert!(
            req.contains(&format!("Authorization: Bearer {}\r\n", plan.token)),
            "{req}"
        );
        assert_eq!(bytes, archive().len() as u64);
        let big = root.path().join("etc/big");
        assert_eq!(std::fs::read(&big).unwrap(), vec![7u8; 100_000]);
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&big).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o640, 1_700_000_000));
        assert_eq!(
            std::fs::read_link(root.path().join("etc/link")).unwrap(),
            Path::new("big")
        );
    }

    #[test]
    fn a_stream_cut_short_leaves_nothing_and_says_why() {
        let mut cut = archive();
        cut.truncate(50_000);
        let (base, server) = one_shot("HTTP/1.0 200 OK\r\n\r\n", cut);
        let mut plan = crate::testutil::plan();
        plan.server_url = base;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("lost+found")).unwrap();
        let e = prefill(&plan, root.path()).unwrap_err();
        server.join().unwrap();
        assert!(e.contains("tar"), "{e}");
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            ["lost+found"],
            "only the filesystem's own directory stays"
        );
    }

    #[test]
    fn a_refusal_names_the_status_and_the_servers_reason() {
        let (base, server) = one_shot(
            "HTTP/1.0 404 Not Found\r\n\r\n",
            br#"{"error":"[install] tar_prefill is off"}"#.to_vec(),
        );
        let mut plan = crate::testutil::plan();
        plan.server_url = base;
        let root = tempfile::tempdir().unwrap();
        let e = prefill(&plan, root.path()).unwrap_err();
        server.join().unwrap();
        assert!(
            e.contains("HTTP 404") && e.contains("tar_prefill is off"),
            "{e}"
        );
    }

    #[test]
    fn the_url_is_the_installs_image_tar() {
        assert_eq!(
            image_tar_url("http://10.44.0.1:8080/", "i-42"),
            "http://10.44.0.1:8080/api/v1/installs/i-42/image.tar"
        );
    }
}
