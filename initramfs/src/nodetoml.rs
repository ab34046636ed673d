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
