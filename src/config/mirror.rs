//! `[images]`: image mirroring between servers. One server (the primary) builds and
//! enters images; the others (one `rollout serve` per rack) copy every serial from it
//! with rsync and serve them to their own nodes.
//!
//! The two sides share one password: on the primary `mirror_password_file` lets a
//! mirror log in (rsync user [`MIRROR_USER`]), on a mirror (`mirror_from` set) it is
//! the password the mirror logs in with. Without it nothing is exported: mirrors are
//! never anonymous.

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The rsync user a mirror logs in as; the primary's daemon knows it from
/// `mirror_password_file`.
pub const MIRROR_USER: &str = "rollout-mirror";

/// The primary's rsync module that holds every image (`{state_dir}/images`). Image
/// names start alphanumerically, so no image or serial module can be called this.
pub const MIRROR_MODULE: &str = "_mirror";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// `rsync://primary[:port]/`: this server is a mirror and copies its images from there.
    pub mirror_from: Option<String>,
    /// The shared mirror password (one line, mode 0600). On the primary: lets mirrors
    /// in; on a mirror: what it logs in with.
    pub mirror_password_file: Option<PathBuf>,
    /// Seconds between two looks at the primary for new serials.
    #[serde(default = "default_interval")]
    pub mirror_interval: u64,
    /// KiB/s a mirror's copy may use (0: no limit): a rack uplink shared with installs.
    #[serde(default)]
    pub mirror_bwlimit: u64,
    /// On the primary: the addresses (rsync `hosts allow` entries such as
    /// `10.45.0.0/24`) mirrors connect from, when they are outside the provisioning
    /// subnet. Default: the provisioning subnet (and relayed subnets).
    #[serde(default)]
    pub mirror_hosts: Vec<String>,
}

fn default_interval() -> u64 {
    30
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            mirror_from: None,
            mirror_password_file: None,
            mirror_interval: default_interval(),
            mirror_bwlimit: 0,
            mirror_hosts: Vec::new(),
        }
    }
}

/// Where a mirror copies from: `mirror_from` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorUrl {
    /// A host name, an IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
}

impl MirrorUrl {
    /// The URL of `path` inside the primary's mirror module, logged in as the mirror.
    pub fn module_url(&self, path: &str) -> String {
        format!(
            "rsync://{MIRROR_USER}@{}:{}/{MIRROR_MODULE}/{path}",
            self.host, self.port
        )
    }
}

impl std::fmt::Display for MirrorUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rsync://{}:{}/", self.host, self.port)
    }
}

impl TryFrom<&str> for MirrorUrl {
    /// What is wrong with it, for the config error.
    type Error = String;

    fn try_from(url: &str) -> Result<MirrorUrl, String> {
        let rest = url
            .strip_prefix("rsync://")
            .ok_or_else(|| format!("{url:?} is not an rsync:// url"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            return Err(format!(
                "{url:?} names a path ({path:?}); mirrors always copy the primary's whole image store"
            ));
        }
        if authority.contains('@') {
            return Err(format!(
                "{url:?} names a user; the mirror always logs in as {MIRROR_USER}"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?} has an unclosed [ in its address"))?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            (format!("[{addr}]"), after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let host_ok = host.starts_with('[')
            || (!host.is_empty()
                && !host.starts_with(['-', '.'])
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')));
        if !host_ok {
            return Err(format!("{url:?} names no valid host"));
        }
        let port = match port {
            None => 873,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("{p:?} is not a port number")),
            },
        };
        Ok(MirrorUrl { host, port })
    }
}

const URL_FIX: &str = "write it as rsync://primary/ or rsync://primary:873/ (the primary's server.address and server.rsync_port), or remove it on the primary itself";

/// What a mirror needs to copy from its primary, checked: `[images]` of a server
/// with `mirror_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSource {
    pub url: MirrorUrl,
    pub password_file: PathBuf,
    pub interval: std::time::Duration,
    /// KiB/s, 0: no limit.
    pub bwlimit: u64,
}

impl ImagesConfig {
    /// Everything a mirror copies with, or `None` on a server that is no mirror.
    pub fn mirror_source(&self) -> Result<Option<MirrorSource>, ConfigError> {
        self.validate()?;
        let Some(url) = self.mirror_url()? else {
            return Ok(None);
        };
        let password_file = self.mirror_password_file.clone().ok_or_else(|| {
            invalid(
                "images.mirror_password_file",
                "is not set but images.mirror_from is",
                "point it at the file holding the mirror password",
            )
        })?;
        Ok(Some(MirrorSource {
            url,
            password_file,
            interval: std::time::Duration::from_secs(self.mirror_interval),
            bwlimit: self.mirror_bwlimit,
        }))
    }

    /// `mirror_from` parsed, or `None` on a server that is no mirror.
    pub fn mirror_url(&self) -> Result<Option<MirrorUrl>, ConfigError> {
        let Some(url) = self.mirror_from.as_deref() else {
            return Ok(None);
        };
        MirrorUrl::try_from(url)
            .map(Some)
            .map_err(|problem| invalid("images.mirror_from", problem, URL_FIX))
    }

    pub fn is_mirror(&self) -> bool {
        self.mirror_from.is_some()
    }

    /// Checks that need no system access; [`check_password_file`] is the one that does.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mirror = self.mirror_url()?.is_some();
        if mirror && self.mirror_password_file.is_none() {
            return Err(invalid(
                "images.mirror_password_file",
                "is not set but images.mirror_from is",
                "point it at a file (mode 0600) holding the same password as mirror_password_file on the primary: mirrors never copy anonymously",
            ));
        }
        if self
            .mirror_password_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "images.mirror_password_file",
                "is empty",
                "give the path of a file holding the mirror password, or remove the key",
            ));
        }
        if !(5..=86_400).contains(&self.mirror_interval) {
            return Err(invalid(
                "images.mirror_interval",
                format!("{} seconds", self.mirror_interval),
                "use 5 to 86400 seconds (the default is 30)",
            ));
        }
        for (i, h) in self.mirror_hosts.iter().enumerate() {
            // rsyncd.conf has no quoting: one entry per list element, no separators.
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || ".:/*".contains(c))
            {
                return Err(invalid(
                    &format!("images.mirror_hosts[{i}]"),
                    format!("{h:?} is not an address or subnet"),
                    "write an address or a subnet such as \"10.45.0.0/24\"",
                ));
            }
        }
        if mirror && !self.mirror_hosts.is_empty() {
            return Err(invalid(
                "images.mirror_hosts",
                "is set on a mirror (images.mirror_from is set)",
                "set mirror_hosts on the primary, which decides who may copy from it",
            ));
        }
        Ok(())
    }
}

/// The password file exists, is a file and is not world-readable (checked at
/// startup like the other secret files), and holds a password the primary's rsync
/// secrets file can carry.
pub fn check_password_file(images: &ImagesConfig) -> Result<(), ConfigError> {
    let Some(path) = &images.mirror_password_file else {
        return Ok(());
    };
    let key = "images.mirror_password_file";
    super::check_secret_file(key, path, "the mirror password")?;
    read_password(path).map_err(|problem| {
        invalid(
            key,
            problem,
            "put one line of letters, digits and '-' in it, e.g. `openssl rand -hex 24 > FILE`",
        )
    })?;
    Ok(())
}

/// The mirror password: the file's first line, trimmed. Read at each use, so a
/// changed password needs no restart.
pub fn read_password(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").trim().to_string();
    if pw.len() < 8 {
        return Err(format!(
            "{} holds a password shorter than 8 characters",
            path.display()
        ));
    }
    if !pw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "{} holds characters other than letters, digits and '-' (rsync's secrets file cannot carry them)",
            path.display()
        ));
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(images: &str) -> Result<Config, String> {
        Config::parse(&format!("state_dir = \"/x\"\n[images]\n{images}\n"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn urls() {
        let ok = |s: &str| MirrorUrl::try_from(s).unwrap();
        assert_eq!(
            ok("rsync://rollout-primary/"),
            MirrorUrl {
                host: "rollout-primary".into(),
                port: 873
            }
        );
        assert_eq!(ok("rsync://10.44.0.1:8873").port, 8873);
        assert_eq!(ok("rsync://[fd00::1]:874/").host, "[fd00::1]");
        assert_eq!(
            ok("rsync://h:9/").module_url("web/serials/3/"),
            "rsync://rollout-mirror@h:9/_mirror/web/serials/3/"
        );
        assert_eq!(ok("rsync://h/").to_string(), "rsync://h:873/");
        for (bad, says) in [
            ("http://primary/", "not an rsync:// url"),
            ("primary", "not an rsync:// url"),
            ("rsync://", "no valid host"),
            ("rsync://primary/web-3/", "names a path"),
            ("rsync://me@primary/", "names a user"),
            ("rsync://primary:0/", "not a port"),
            ("rsync://primary:x/", "not a port"),
            ("rsync://[zz]/", "not an IPv6"),
            ("rsync://-o/", "no valid host"),
        ] {
            let e = MirrorUrl::try_from(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = parse("").unwrap();
        assert!(!c.mirroring.is_mirror());
        assert_eq!(c.mirroring.mirror_interval, 30);
        let e = parse("mirror_from = \"http://p/\"\nmirror_password_file = \"/p\"").unwrap_err();
        assert!(
            e.contains("images.mirror_from") && e.contains("not an rsync:// url"),
            "{e}"
        );
        let e = parse("mirror_from = \"rsync://p/\"").unwrap_err();
        assert!(e.contains("images.mirror_password_file"), "{e}");
        let e = parse(
            "mirror_from = \"rsync://p/\"\nmirror_password_file = \"/p\"\nmirror_interval = 1",
        )
        .unwrap_err();
        assert!(e.contains("images.mirror_interval"), "{e}");
        let e = parse("mirror_hosts = [\"10.0.0.0/8 #\"]").unwrap_err();
        assert!(e.contains("images.mirror_hosts[0]"), "{e}");
        let c = parse(
            "mirror_from = \"rsync://p:99/\"\nmirror_password_file = \"/p\"\nmirror_bwlimit = 512",
        )
        .unwrap();
        let m = c.mirroring.mirror_source().unwrap().unwrap();
        assert_eq!((m.url.port, m.bwlimit, m.interval.as_secs()), (99, 512, 30));
        assert_eq!(m.password_file, std::path::Path::new("/p"));
        assert!(parse("")
            .unwrap()
            .mirroring
            .mirror_source()
            .unwrap()
            .is_none());
        // `[[image]]` tables keep working next to `[images]`.
        let c = Config::parse(
            "state_dir = \"/x\"\n[images]\nmirror_password_file = \"/p\"\n[[image]]\nname = \"web\"\nexcludes = [\"/var/x/\"]\n",
        )
        .unwrap();
        assert_eq!(c.images[0].name, "web");
    }

    #[test]
    fn password_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let cfg = ImagesConfig {
            mirror_password_file: Some(path.clone()),
            ..Default::default()
        };
        assert!(check_password_file(&cfg)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_password_file(&cfg).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_password_file(&cfg).unwrap();
        assert_eq!(read_password(&path).unwrap(), "0123456789abcdef");
        std::fs::write(&path, "pass:word\n").unwrap();
        let e = check_password_file(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("images.mirror_password_file") && e.contains("openssl rand"),
            "{e}"
        );
    }
}
