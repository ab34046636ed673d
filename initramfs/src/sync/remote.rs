//! What rollout-sync asks the server: the published serial, the image's node-local
//! paths, and where its rsync module is; and the serial it reports back.

use std::path::Path;
use std::time::Duration;

use rollout::wire::paths as api;

use super::{NodeConf, SyncError};
use crate::{http, phone_home, render};

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
            let u = http::parse_url(&conf.server).map_err(|e| SyncError::Serial {
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

pub(super) fn fetch_published(conf: &NodeConf) -> Result<u64, SyncError> {
    let url = serial_url(&conf.server, &conf.image);
    let err = |reason: String| SyncError::Serial {
        url: url.clone(),
        reason,
    };
    let mut last = String::new();
    for attempt in 1..=3 {
        match http::get(&url, Duration::from_secs(10)) {
            Ok(r) if r.is_success() => {
                return parse_serial(&r.text())
                    .ok_or_else(|| err(format!("answer {:?} is not a serial", r.text().trim())))
            }
            // The server answered: retrying will not change its mind.
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

pub(super) fn report_serial(root: &Path) -> Result<(), String> {
    let (url, report) = phone_home::build(root).map_err(|e| e.to_string())?;
    let body = render::phone_home_json(&report);
    match http::post_json(&url, None, &body, Duration::from_secs(10)) {
        Ok(r) if r.is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}: {}", r.status, r.text().trim())),
        Err(e) => Err(e.to_string()),
    }
}
