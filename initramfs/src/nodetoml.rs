//! `/etc/rollout/node.toml` on an installed node, as the installer wrote it:
//! what `rollout-sync` and the phone-home unit know about their server and image.

use std::collections::HashMap;
use std::path::Path;

use crate::{paths, render};

#[derive(Debug, thiserror::Error)]
pub enum NodeTomlError {
    #[error(
        "reading {path}: {source} (written by the installer; was this node installed by rollout?)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} lacks `{1}`; reinstall the node or add the key")]
    Missing(String, &'static str),
    #[error("cannot read {path} ({source}): this node has no credential for the rollout server, it was installed before rollout issued them; reinstall it (`rollout node reinstall HOSTNAME` on the server)")]
    NoCredential {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The node's secret for `Authorization: Bearer` (root only, [`paths::NODE_SECRET`]).
pub fn node_secret(root: &Path) -> Result<String, NodeTomlError> {
    credential_file(root, paths::NODE_SECRET)
}

/// The node's rsync login: `rsync_user` from node.toml, its password from
/// [`paths::NODE_RSYNC_PASSWORD`].
pub fn node_rsync(
    root: &Path,
    conf: &NodeToml,
) -> Result<rollout::wire::RsyncCredential, NodeTomlError> {
    Ok(rollout::wire::RsyncCredential {
        user: conf.require("rsync_user")?,
        password: credential_file(root, paths::NODE_RSYNC_PASSWORD)?,
    })
}

fn credential_file(root: &Path, path: &str) -> Result<String, NodeTomlError> {
    let p = root.join(path.trim_start_matches('/'));
    let text = std::fs::read_to_string(&p).map_err(|source| NodeTomlError::NoCredential {
        path: p.display().to_string(),
        source,
    })?;
    Ok(text.trim().to_string())
}

pub struct NodeToml {
    path: String,
    values: HashMap<String, String>,
}

impl NodeToml {
    /// Reads it under `root` (`/` on a node).
    pub fn read(root: &Path) -> Result<NodeToml, NodeTomlError> {
        let path = root.join(paths::NODE_CONFIG.trim_start_matches('/'));
        let text = std::fs::read_to_string(&path).map_err(|source| NodeTomlError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(NodeToml {
            path: path.display().to_string(),
            values: render::parse_node_toml(&text),
        })
    }

    /// A key that is set and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, key: &'static str) -> Result<String, NodeTomlError> {
        self.get(key)
            .map(String::from)
            .ok_or_else(|| NodeTomlError::Missing(self.path.clone(), key))
    }
}
