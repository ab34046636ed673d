//! Fetching the install plan (`POST`, with the boot secret from the kernel
//! command line), with a growing wait while the server is away. A refusal
//! (403: this machine is not the node, or its boot secret is spent) is final:
//! asking again cannot change it, a new PXE boot can.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("POST {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: http_client::HttpError,
    },
    #[error("POST {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("POST {url} returned a plan this installer cannot read ({source}); are server and installer from the same release?")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no usable plan from {url} after {secs} s; last error: {last}")]
    GaveUp {
        url: String,
        secs: u64,
        last: String,
    },
}

pub fn plan_url(server: &str, mac: &str) -> String {
    format!("{server}{}/{mac}", wire::paths::PLAN)
}

/// One plan request.
pub fn get_plan(
    server: &str,
    mac: &str,
    request: &wire::PlanRequest,
) -> Result<InstallPlan, PlanError> {
    let url = plan_url(server, mac);
    let body = serde_json::to_vec(request).unwrap_or_default();
    let resp =
        http_client::post_json(&url, None, &body, Duration::from_secs(10)).map_err(|source| {
            PlanError::Http {
                url: url.clone(),
                source,
            }
        })?;
    if resp.status != 200 {
        return Err(PlanError::Status {
            url,
            status: resp.status,
            body: resp.text().trim().chars().take(300).collect(),
        });
    }
    serde_json::from_slice(&resp.body).map_err(|source| PlanError::Json { url, source })
}

/// [`get_plan`] until it succeeds, waiting 1, 2, 4 … up to 30 s between tries
/// (`pause` does the waiting, so tests need not), and giving up after `limit`.
pub fn get_plan_retrying(
    server: &str,
    mac: &str,
    request: &wire::PlanRequest,
    limit: Duration,
    pause: &mut dyn FnMut(Duration, &PlanError),
) -> Result<InstallPlan, PlanError> {
    let mut waited = Duration::ZERO;
    let mut wait = Duration::from_secs(1);
    loop {
        match get_plan(server, mac, request) {
            Ok(p) => return Ok(p),
            Err(e @ PlanError::Status { status: 403, .. }) => return Err(e),
            Err(e) if waited + wait > limit => {
                return Err(PlanError::GaveUp {
                    url: plan_url(server, mac),
                    secs: limit.as_secs(),
                    last: e.to_string(),
                })
            }
            Err(e) => {
                pause(wait, &e);
                waited += wait;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> wire::PlanRequest {
        wire::PlanRequest {
            boot_secret: Some(s.into()),
            hardware: None,
        }
    }

    /// Server unreachable: retried with growing waits, then a clear failure; a
    /// server that comes up meanwhile is used.
    #[test]
    fn unreachable_server_is_retried_with_backoff_then_given_up() {
        // A port nobody listens on: connection refused every time.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let server = format!("http://127.0.0.1:{port}");
        let mut waits = vec![];
        let e = get_plan_retrying(
            &server,
            "52:54:00:00:00:01",
            &wire::PlanRequest::default(),
            Duration::from_secs(60),
            &mut |w, _| waits.push(w.as_secs()),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(waits, [1, 2, 4, 8, 16], "backoff doubles until the limit");
        assert!(e.contains("60") && e.contains(&server), "{e}");

        // The server starts while the installer waits: the next try gets the plan.
        let mut listener = None;
        let body = serde_json::to_string(&crate::testutil::plan()).unwrap();
        let mut tries = 0;
        let plan = get_plan_retrying(
            &server,
            "52:54:00:00:00:01",
            &secret("s3cret"),
            Duration::from_secs(60),
            &mut |_, _| {
                tries += 1;
                if tries == 2 {
                    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
                    let body = body.clone();
                    listener = Some(std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let (mut c, _) = l.accept().unwrap();
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf).unwrap();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        c.write_all(resp.as_bytes()).unwrap();
                    }));
                }
            },
        )
        .unwrap();
        assert_eq!(plan, crate::testutil::plan());
        assert_eq!(tries, 2);
        listener.unwrap().join().unwrap();
    }

    #[test]
    fn plan_fetch_posts_the_boot_secret_reads_json_and_reports_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = serde_json::to_string(&crate::testutil::plan()).unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut requests = vec![];
            for resp in [
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                "HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nunknown".to_string(),
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nspent".to_string(),
            ] {
                let (mut c, _) = listener.accept().unwrap();
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                c.write_all(resp.as_bytes()).unwrap();
            }
            requests
        });
        let server = format!("http://127.0.0.1:{port}");
        let p = get_plan(&server, "52:54:00:00:00:01", &secret("0a1b")).unwrap();
        assert_eq!(p, crate::testutil::plan());
        let e = get_plan(&server, "52:54:00:00:00:01", &wire::PlanRequest::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("404") && e.contains("unknown"), "{e}");
        // A refusal is not retried: only a new PXE boot can change it.
        let mut pauses = 0;
        let e = get_plan_retrying(
            &server,
            "52:54:00:00:00:01",
            &secret("0a1b"),
            Duration::from_secs(60),
            &mut |_, _| pauses += 1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("403") && e.contains("spent"), "{e}");
        assert_eq!(pauses, 0);
        let requests = t.join().unwrap();
        assert!(
            requests[0].starts_with("POST /api/v1/plan/52:54:00:00:00:01 HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(
            requests[0].ends_with("\r\n\r\n{\"boot_secret\":\"0a1b\"}"),
            "{}",
            requests[0]
        );
        assert!(requests[1].ends_with("\r\n\r\n{}"), "{}", requests[1]);
    }
}
