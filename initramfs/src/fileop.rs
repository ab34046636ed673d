//! A failed file operation, one type for every module that reads or writes the
//! installed root, so each message reads the same: `{op} {path}: {cause}`.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FileError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: `std::fs::read(&p).map_err(io("read", &p))?`.
pub fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.display().to_string();
    move |source| FileError { op, path, source }
}
