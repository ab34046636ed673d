//! The HTTP accept loop. `axum::serve` has no header-read timeout (it sets no
//! timer, so hyper's is off) and no connection cap; on a shared provisioning
//! network a slowloris client would hold connections (and file descriptors)
//! forever. This loop serves HTTP/1.1 with hyper directly: every connection holds
//! a permit of a semaphore (at the cap the loop stops accepting and the kernel's
//! backlog queues the rest), a client gets [`Limits::header_read`] to send a
//! request's headers (also the idle time allowed between keep-alive requests),
//! and on shutdown connections are asked to finish and dropped after
//! [`Limits::drain`].

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once. Nodes make short requests; dashboards and
    /// `rollout watch` hold one stream each. 512 is far above a rack's needs and
    /// far below the raised RLIMIT_NOFILE.
    pub max_connections: usize,
    /// Time a client has to send a request's headers once the server waits for them.
    pub header_read: Duration,
    /// Time connections get to finish after shutdown starts.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read: Duration::from_secs(10),
            drain: Duration::from_secs(3),
        }
    }
}

/// Serves `app` on `listener` until `cancel` fires, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut at_cap_warned = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_cap_warned {
                    warn!(
                        max = limits.max_connections,
                        "HTTP connection cap reached; new connections wait in the backlog"
                    );
                    at_cap_warned = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        if permits.available_permits() > limits.max_connections / 2 {
            at_cap_warned = false;
        }
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = tower::service_fn(move |mut req: axum::http::Request<_>| {
                // What `into_make_service_with_connect_info` did: handlers read the peer.
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read);
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = cancel.cancelled() => None,
            };
            let result = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.drain, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => {
                            debug!(%peer, "connection still busy at shutdown; closed");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use futures_lite::StreamExt;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    fn get_root(addr: SocketAddr, wait: Duration) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(wait))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Two connections allowed: a third waits until one of them goes, a client
    /// that never sends its headers is cut off, and shutdown ends the loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caps_connections_and_times_out_silent_clients() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A response that takes longer than the header timeout (a slow
        // download, a live stream) is not cut by it.
        let slow = || async {
            let chunks = futures_lite::stream::iter(0..3).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                Ok::<_, std::convert::Infallible>(format!("chunk{i} "))
            });
            axum::body::Body::from_stream(chunks)
        };
        let app = Router::new()
            .route("/", get(|| async { "hello" }))
            .route("/slow", get(slow));
        let limits = Limits {
            max_connections: 2,
            header_read: Duration::from_millis(1500),
            drain: Duration::from_millis(200),
        };
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, limits, cancel.clone()));
        tokio::task::spawn_blocking(move || {
            // Two silent clients take both slots.
            let mut a = std::net::TcpStream::connect(addr).unwrap();
            let _b = std::net::TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let third = get_root(addr, Duration::from_millis(500));
            assert!(third.is_err(), "served beyond the cap: {third:?}");
            // The header timeout closes the silent ones; then a client is served.
            a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 16];
            assert_eq!(
                a.read(&mut buf).unwrap(),
                0,
                "a silent client was not closed"
            );
            let ok = get_root(addr, Duration::from_secs(5)).unwrap();
            assert!(
                ok.starts_with("HTTP/1.1 200") && ok.ends_with("hello"),
                "{ok}"
            );
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            assert!(
                body.contains("chunk0 ") && body.contains("chunk2 "),
                "{body}"
            );
        })
        .await
        .unwrap();
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("serve returns after cancel")
            .unwrap()
            .unwrap();
    }
}
