//! Fetching the install plan, with a growing wait while the server is away.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: http_client::HttpError,
    },
    #[error("GET {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url} returned a plan this installer cannot read ({source}); are server and installer from the same release?")]
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

/// One GET of the plan.
pub fn get_plan(server: &str, mac: &str) -> Result<InstallPlan, PlanError> {
    let url = plan_url(server, mac);
    let resp =
        http_client::get(&url, Duration::from_secs(10)).map_err(|source| PlanError::Http {
            url: url.clone(),
            source,
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
    limit: Duration,
    pause: &mut dyn FnMut(Duration, &PlanError),
) -> Result<InstallPlan, PlanError> {
    let mut waited = Duration::ZERO;
    let mut wait = Duration::from_secs(1);
    loop {
        match get_plan(server, mac) {
            Ok(p) => return Ok(p),
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
    fn plan_fetch_reads_json_and_reports_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = serde_json::to_string(&crate::testutil::plan()).unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for resp in [
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                "HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nunknown".to_string(),
            ] {
                let (mut c, _) = listener.accept().unwrap();
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf).unwrap();
                c.write_all(resp.as_bytes()).unwrap();
            }
        });
        let server = format!("http://127.0.0.1:{port}");
        let p = get_plan(&server, "52:54:00:00:00:01").unwrap();
        assert_eq!(p, crate::testutil::plan());
        let e = get_plan(&server, "52:54:00:00:00:01")
            .unwrap_err()
            .to_string();
        assert!(e.contains("404") && e.contains("unknown"), "{e}");
        t.join().unwrap();
    }
}
