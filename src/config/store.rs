//! `[store]`: where the leases live when several servers share them. Absent,
//! each server keeps them in SQLite in its state_dir (see the `store` module).

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user@host[:port]/database` (a unix socket directory as
    /// `?host=/run/postgresql`).
    pub url: String,
    /// The database user's password, one line; read at every connection so
    /// it never sits in the config file.
    pub password_file: Option<PathBuf>,
}

/// A `[store]` whose url parsed: what the `store` module's PostgreSQL backend connects with.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The url as written, its password (if any) replaced: safe for logs and errors.
    pub shown: String,
    pub config: postgres::Config,
    pub password_file: Option<PathBuf>,
}

const URL_FIX: &str =
    "write it as postgres://user@host/database (add :port after host if not 5432), or remove [store] to keep the leases in SQLite in state_dir";

impl TryFrom<&StoreConfig> for PgTarget {
    type Error = ConfigError;

    fn try_from(s: &StoreConfig) -> Result<PgTarget, ConfigError> {
        let shown = redact(&s.url);
        if !(s.url.starts_with("postgres://") || s.url.starts_with("postgresql://")) {
            return Err(invalid(
                "store.url",
                format!("{shown:?} is not a postgres:// url"),
                URL_FIX,
            ));
        }
        let config: postgres::Config = s.url.parse().map_err(|e| {
            invalid(
                "store.url",
                format!("{shown:?} does not parse: {e}"),
                URL_FIX,
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(invalid(
                "store.url",
                format!("{shown:?} names no host"),
                URL_FIX,
            ));
        }
        if config.get_user().is_none() {
            return Err(invalid(
                "store.url",
                format!("{shown:?} names no user"),
                URL_FIX,
            ));
        }
        if config.get_password().is_some() && s.password_file.is_some() {
            return Err(invalid(
                "store.url",
                format!("{shown:?} holds a password and store.password_file is set too"),
                "keep the password in password_file only (the config file is readable by more people than a 0600 file)",
            ));
        }
        if let Some(p) = &s.password_file {
            if p.as_os_str().is_empty() {
                return Err(invalid(
                    "store.password_file",
                    "is empty",
                    "give the path of a file holding the database user's password, or remove the key",
                ));
            }
        }
        Ok(PgTarget {
            shown,
            config,
            password_file: s.password_file.clone(),
        })
    }
}

/// `url` with the password of its user info (`user:password@`) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, password_file: Option<&str>) -> Result<PgTarget, String> {
        PgTarget::try_from(&StoreConfig {
            url: url.into(),
            password_file: password_file.map(PathBuf::from),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_url_is_kept_with_its_password_hidden() {
        let t = target(
            "postgres://rollout@db1/rollout",
            Some("/etc/rollout/db.password"),
        )
        .unwrap();
        assert_eq!(t.shown, "postgres://rollout@db1/rollout");
        assert_eq!(t.config.get_dbname(), Some("rollout"));
        let t = target("postgresql://rollout:s3cret@db1:5433/rollout", None).unwrap();
        assert_eq!(t.shown, "postgresql://rollout:***@db1:5433/rollout");
        assert_eq!(t.config.get_ports(), &[5433]);
        let t = target("postgres://rollout@/rollout?host=/run/postgresql", None).unwrap();
        assert_eq!(t.shown, "postgres://rollout@/rollout?host=/run/postgresql");
    }

    #[test]
    fn a_bad_url_is_refused_naming_the_key_and_the_form() {
        for (url, problem) in [
            ("mysql://rollout@db1/rollout", "is not a postgres:// url"),
            ("postgres://rollout@db1:notaport/rollout", "does not parse"),
            ("postgres://db1/rollout", "names no user"),
            ("postgres://rollout@/rollout", "names no host"),
        ] {
            let e = target(url, None).unwrap_err();
            assert!(e.contains("store.url") && e.contains(problem), "{url}: {e}");
            assert!(e.contains("postgres://user@host/database"), "{e}");
        }
        let e = target("postgres://rollout:s3cret@db1/rollout", Some("/etc/p")).unwrap_err();
        assert!(e.contains("password_file"), "{e}");
        assert!(!e.contains("s3cret"), "the password leaked: {e}");
    }

    /// What `check-config` and `serve` run: the file is refused at load.
    #[test]
    fn the_config_file_is_refused_at_load() {
        let parse = |store: &str| {
            crate::config::Config::parse(&format!("state_dir = \"/x\"\n[store]\n{store}"))
        };
        let e = parse("url = \"postgres://db1/rollout\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config key `store.url`") && e.contains("names no user"),
            "{e}"
        );
        let e = parse("url = \"postgres://r@db1/r\"\nuser = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `user`"), "{e}");
        let c = parse("url = \"postgres://r@db1/r\"\npassword_file = \"/etc/p\"\n").unwrap();
        assert_eq!(
            c.store.unwrap().password_file,
            Some(PathBuf::from("/etc/p"))
        );
    }
}
