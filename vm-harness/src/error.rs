//! The lab's one error type. Messages name the cause and, where there is one, the fix.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the virtual lab needs root (network namespaces, tap devices); run it as root or under sudo")]
    NotRoot,

    #[error("`{tool}` was not found: {hint}")]
    MissingTool { tool: String, hint: String },

    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },

    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid lab name {0:?}: use 1-24 characters of a-z, 0-9 and '-'")]
    BadName(String),

    #[error("timed out after {}s waiting for {what}", .after.as_secs())]
    Timeout { what: String, after: Duration },

    #[error("{what} exited ({status}) before {waiting_for}; see {log}")]
    Exited {
        what: String,
        status: String,
        waiting_for: String,
        log: PathBuf,
    },

    #[error("QMP on {socket}: {message}")]
    Qmp { socket: PathBuf, message: String },

    #[error("invalid console pattern: {0}")]
    Pattern(#[from] regex::Error),

    #[error("could not write the lab config: {0}")]
    Config(#[from] toml::ser::Error),

    #[error("network namespace {ns}: {message}")]
    Netns { ns: String, message: String },

    #[error("the boot server did not come up: {cause}\n{log_tail}")]
    ServerNotReady { cause: String, log_tail: String },

    #[error("node {node} failed to install: {detail}")]
    InstallFailed { node: String, detail: String },

    #[error("interrupted")]
    Interrupted,

    #[error("HTTP {url}: {message}")]
    Http { url: String, message: String },
}

impl From<testkit::netns::NetnsError> for Error {
    fn from(e: testkit::netns::NetnsError) -> Error {
        Error::Netns {
            ns: e.ns,
            message: e.message,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path and a short context to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context,
            path: path.into(),
            source,
        })
    }
}
