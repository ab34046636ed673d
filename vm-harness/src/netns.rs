//! The lab's namespaces: how they are named and found. Creating, entering and
//! removing them is `testkit::netns`, the one implementation the workspace's
//! netns tests use too (the lab is test infrastructure, so it shares theirs).

pub use testkit::netns::{exists, remove as remove_namespace, Netns};

use crate::error::{Error, Result};

/// Prefix of every namespace the harness creates; `down` only touches these.
pub const NS_PREFIX: &str = "rollout-lab-";

/// The namespace name for a lab called `lab`.
pub fn ns_name(lab: &str) -> Result<String> {
    let ok = !lab.is_empty()
        && lab.len() <= 24
        && lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(Error::BadName(lab.to_string()));
    }
    Ok(format!("{NS_PREFIX}{lab}"))
}

/// Names of every lab namespace on the machine (for `vm-harness down --all`).
pub fn list_lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_checked() {
        assert_eq!(ns_name("pxe-1").unwrap(), "rollout-lab-pxe-1");
        for bad in ["", "Pxe", "a b", "x/../y", &"a".repeat(25)] {
            assert!(ns_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
