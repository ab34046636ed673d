//! A minimal HTTP/1.1 client over `TcpStream` (plain http only): the installer
//! talks to one server on the local network and needs GET and POST with JSON.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}: expected http://HOST[:PORT]/PATH")]
    Url(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

pub fn parse_url(s: &str) -> Result<Url, HttpError> {
    let bad = || HttpError::Url(s.to_string());
    let rest = s.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Url {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body; `None` while incomplete.
fn dechunk(mut data: &[u8]) -> Option<Result<Vec<u8>, HttpError>> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok();
        let size =
            size_text.and_then(|t| usize::from_str_radix(t.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else {
            return Some(Err(HttpError::Malformed("bad chunk size")));
        };
        data = &data[eol + 2..];
        if size == 0 {
            return Some(Ok(out));
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Parses a response from the bytes read so far. `Ok(None)` means "read more";
/// with `eof` set, a body without length ends at the end of the stream.
pub fn parse_response(raw: &[u8], eof: bool) -> Result<Option<Response>, HttpError> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return if eof {
            Err(HttpError::Malformed(
                "connection closed before the headers ended",
            ))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| HttpError::Malformed("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = status_code(lines.next().unwrap_or_default())?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
            );
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        match dechunk(body) {
            Some(r) => r?,
            None if eof => return Err(HttpError::Malformed("truncated chunked body")),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if body.len() < n {
            return if eof {
                Err(HttpError::Malformed("body shorter than Content-Length"))
            } else {
                Ok(None)
            };
        }
        body[..n].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, body }))
}

/// A connection to `url`'s host with `timeout` on connecting, reads and
/// writes: the parsed URL, its `host:port` for messages, the stream.
fn connect(url: &str, timeout: Duration) -> Result<(Url, String, TcpStream), HttpError> {
    let u = parse_url(url)?;
    let addr = format!("{}:{}", u.host, u.port);
    let sock = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Connect {
            addr: addr.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| HttpError::Url(url.to_string()))?;
    let s = TcpStream::connect_timeout(&sock, timeout).map_err(|source| HttpError::Connect {
        addr: addr.clone(),
        source,
    })?;
    let set = s
        .set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)));
    set.map_err(|source| HttpError::Io {
        addr: addr.clone(),
        source,
    })?;
    Ok((u, addr, s))
}

pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let (u, addr, mut s) = connect(url, timeout)?;
    let ioe = |source| HttpError::Io {
        addr: addr.clone(),
        source,
    };
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rollout-installer\r\nConnection: close\r\n",
        u.path, addr
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    s.write_all(&out).map_err(ioe)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).map_err(ioe)?;
        if n > 0 {
            buf.extend_from_slice(&chunk[..n]);
        }
        if let Some(r) = parse_response(&buf, n == 0)? {
            return Ok(r);
        }
    }
}

pub fn get(url: &str, timeout: Duration) -> Result<Response, HttpError> {
    request("GET", url, &[], None, timeout)
}

/// A GET whose body is read as it arrives (an image stream): the status and
/// a reader of the body. Asked as HTTP/1.0, so the server ends the body by
/// closing the connection rather than in chunks. A non-2xx answer comes back
/// as [`HttpError::Status`] with the start of its body.
pub fn get_stream(url: &str, bearer: &str, timeout: Duration) -> Result<impl Read, HttpError> {
    let (u, addr, mut s) = connect(url, timeout)?;
    let ioe = |source| HttpError::Io {
        addr: addr.clone(),
        source,
    };
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: rollout-installer\r\nAuthorization: Bearer {bearer}\r\n\r\n",
        u.path
    );
    s.write_all(req.as_bytes()).map_err(ioe)?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        let n = s.read(&mut chunk).map_err(ioe)?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the headers ended",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&head, b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(HttpError::Malformed("headers over 64 KiB"));
        }
    };
    let line_end = find(&head, b"\r\n").unwrap_or(end);
    let status_line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| HttpError::Malformed("status line is not UTF-8"))?;
    let status = status_code(status_line)?;
    let rest = head.split_off(end);
    if !(200..300).contains(&status) {
        let mut body = rest;
        let _ = (&mut s).take(4096).read_to_end(&mut body);
        return Err(HttpError::Status {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    Ok(std::io::Cursor::new(rest).chain(s))
}

/// The status code of a response's status line (`HTTP/1.x NNN …`).
fn status_code(status_line: &str) -> Result<u16, HttpError> {
    let mut parts = status_line.split_whitespace();
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status code"))
}

pub fn post_json(
    url: &str,
    bearer: Option<&str>,
    json: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    request("POST", url, &headers, Some(json), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://10.44.0.1:8080/api/v1/plan/x").unwrap(),
            Url {
                host: "10.44.0.1".into(),
                port: 8080,
                path: "/api/v1/plan/x".into()
            }
        );
        assert_eq!(parse_url("http://srv").unwrap().port, 80);
        assert_eq!(parse_url("http://srv").unwrap().path, "/");
        assert!(parse_url("https://srv/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:notaport/").is_err());
    }

    #[test]
    fn content_length_bodies_wait_for_all_bytes() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert!(parse_response(r, true).is_err());
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let resp = parse_response(r, false).unwrap().unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hello"[..]));
    }

    #[test]
    fn chunked_and_eof_bodies() {
        let r = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnode\r\n6;x=y\r\n known\r\n0\r\n\r\n";
        let resp = parse_response(r, false).unwrap().unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.text(), "node known");
        assert!(!resp.is_success());
        let partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno";
        assert_eq!(parse_response(partial, false).unwrap(), None);
        let r = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert_eq!(
            parse_response(r, true).unwrap().unwrap().text(),
            "until close"
        );
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n", true).is_err());
    }

    #[test]
    fn round_trip_against_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while find(&got, b"{\"a\":1}").is_none() {
                let n = c.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let url = format!("http://127.0.0.1:{port}/api/v1/installs/i1/events");
        let r = post_json(&url, Some("tok"), br#"{"a":1}"#, Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (201, "ok"));
        let req = t.join().unwrap();
        assert!(
            req.starts_with("POST /api/v1/installs/i1/events HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("Authorization: Bearer tok\r\n"));
        assert!(req.contains("Content-Length: 7\r\n"));
    }
}
