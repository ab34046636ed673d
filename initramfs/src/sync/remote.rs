//! What rollout-sync asks the server: the published serial, the image's node-local
//! paths, and where its rsync module is; and the serial it reports back.

use std::path::Path;
use std::time::Duration;

use rollout::wire::paths as api;

use super::{NodeConf, SyncError};
use crate::{http_client, phone_home};

pub fn serial_url(server: &str, image: &str) -> String {
    format!(
        "{}{}/{image}/serial",
        server.trim_end_matches('/'),
        api::IMAGES
    )
}

/// `rsync://host[:port]/{image}-{serial}/`, the server's per-serial module.
pub fn module_url(conf: &NodeConf, serial: u64) -> Result<String, SyncError> {
    let base = match &conf.rsync {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            let u = http_client::parse_url(&conf.server).map_err(|e| SyncError::Server {
                url: conf.server.clone(),
                reason: e.to_string(),
            })?;
            format!("rsync://{}", u.host)
        }
    };
    Ok(format!("{base}/{}-{serial}/", conf.image))
}

pub fn parse_serial(body: &str) -> Option<u64> {
    body.trim().parse().ok()
}

pub fn excludes_url(server: &str, image: &str) -> String {
    format!(
        "{}{}/{image}/excludes",
        server.trim_end_matches('/'),
        api::IMAGES
    )
}

/// One pattern per line; anything that is not an absolute pattern is ignored
/// rather than handed to rsync.
pub fn parse_excludes(body: &str) -> Vec<String> {
    body.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/') && !l.chars().any(char::is_control))
        .map(String::from)
        .collect()
}

/// GET with the node's Bearer, three tries for a server that is briefly away;
/// an answer that is not a success is final.
fn fetch_text(url: &str, secret: &str) -> Result<String, SyncError> {
    let err = |reason: String| SyncError::Server {
        url: url.to_string(),
        reason,
    };
    let mut last = String::new();
    for attempt in 1..=3 {
        let auth = format!("Bearer {secret}");
        match http_client::request(
            "GET",
            url,
            &[("Authorization", &auth)],
            None,
            Duration::from_secs(10),
        ) {
            Ok(r) if r.is_success() => return Ok(r.text()),
            Ok(r) => {
                return Err(err(format!(
                    "server answered {}: {}",
                    r.status,
                    r.text().trim()
                )))
            }
            Err(e) => last = e.to_string(),
        }
        if attempt < 3 {
            std::thread::sleep(Duration::from_secs(2 * attempt));
        }
    }
    Err(err(last))
}

pub(super) fn fetch_published(conf: &NodeConf) -> Result<u64, SyncError> {
    let url = serial_url(&conf.server, &conf.image);
    let body = fetch_text(&url, &conf.secret)?;
    parse_serial(&body).ok_or_else(|| SyncError::Server {
        url,
        reason: format!("answer {:?} is not a serial", body.trim()),
    })
}

/// The image's node-local paths as the server lists them now, so a path the
/// operator adds after the install is protected from the next sync on.
pub(super) fn fetch_excludes(conf: &NodeConf) -> Result<Vec<String>, SyncError> {
    Ok(parse_excludes(&fetch_text(
        &excludes_url(&conf.server, &conf.image),
        &conf.secret,
    )?))
}

pub(super) fn report_serial(root: &Path) -> Result<(), String> {
    let report = phone_home::build(root).map_err(|e| e.to_string())?;
    match phone_home::post(&report) {
        Ok(r) if r.is_success() => Ok(()),
        Ok(r) => Err(format!(
            "{} answered {}: {}",
            report.url,
            r.status,
            r.text().trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn excludes_are_absolute_patterns_only() {
        assert_eq!(
            super::parse_excludes("/etc/hostname\n\n  /var/lib/site/ \nrelative\n--delete-all\n"),
            ["/etc/hostname", "/var/lib/site/"]
        );
    }
}
