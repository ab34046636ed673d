//! `rollout image …`

use super::build::BuildOptions;
use super::enter::EnterOptions;
use super::store::{Images, SerialMeta};
use super::ImageError;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Build a fresh Debian image with debootstrap and publish it.
    Build {
        name: String,
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Extra packages (comma-separated, repeatable).
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        #[arg(long, default_value = "linux-image-amd64")]
        kernel: String,
        /// Default: the Debian mirror in /etc/apt/sources.list*, else http://deb.debian.org/debian.
        #[arg(long)]
        mirror: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Import a directory or tarball as a new serial and publish it.
    Import {
        name: String,
        source: PathBuf,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Open a shell (or run a command after `--`) in a copy of the published serial;
    /// on success the result is published as a new serial.
    Enter {
        name: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Also delete paths matching this pattern before publishing (repeatable).
        #[arg(long)]
        strip: Vec<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List images and their published serials.
    List,
    /// Show one image: published serial, serials, rsync modules.
    Show { name: String },
    /// Every serial with its date, size and changes.
    History { name: String },
    /// Publish an existing serial again.
    Rollback { name: String, serial: u64 },
    /// Delete old serials, keeping the newest K, the published one and any a node
    /// is installing right now.
    Prune {
        name: String,
        #[arg(long)]
        keep: usize,
    },
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn announce(name: &str, meta: Option<SerialMeta>, previous: Option<u64>) {
    match meta {
        Some(m) => {
            let changes = m
                .changes
                .as_ref()
                .map(|c| format!(", changes {}", c.summary()))
                .unwrap_or_default();
            println!(
                "published {name} serial {} ({} files, {}{changes})",
                m.serial,
                m.file_count,
                mib(m.size_bytes)
            );
        }
        None => match previous {
            Some(p) => println!("no changes; {name} serial {p} stays published"),
            None => println!("no changes"),
        },
    }
}

/// From the server's node records (read directly, so it works whether or not
/// `rollout serve` runs: the shared database's when `[store]` names one);
/// none when the server never ran here.
fn being_installed(
    config: &crate::config::Config,
    image: &str,
) -> anyhow::Result<Vec<(u64, String)>> {
    let shared = config
        .store
        .as_ref()
        .map(crate::config::PgTarget::try_from)
        .transpose()?;
    if shared.is_none() && !config.state_dir.join("rollout.db").exists() {
        return Ok(Vec::new());
    }
    let backend = crate::store::Backend::new(&config.state_dir, shared.as_ref());
    let inventory = crate::inventory::Inventory::new(backend.node_store()?, Default::default());
    Ok(crate::inventory::serials_being_installed(
        &inventory.list()?,
        image,
    ))
}

/// A mirror copies its serials from the primary and follows its publishes and
/// prunes: a change made here would be a serial the primary does not have.
fn refuse_on_mirror(cmd: &ImageCmd, config: &crate::config::Config) -> Result<(), ImageError> {
    let changes = !matches!(
        cmd,
        ImageCmd::List | ImageCmd::Show { .. } | ImageCmd::History { .. }
    );
    match &config.mirroring.mirror_from {
        Some(from) if changes => Err(ImageError::IsMirror(from.clone())),
        _ => Ok(()),
    }
}

pub fn run(cmd: ImageCmd, config: &crate::config::Config) -> anyhow::Result<()> {
    refuse_on_mirror(&cmd, config)?;
    let images = Images::new(&config.state_dir).configured(config.images.clone());
    match cmd {
        ImageCmd::Build {
            name,
            suite,
            include,
            kernel,
            mirror,
            note,
        } => {
            let opts = BuildOptions {
                suite,
                mirror,
                kernel,
                include,
                note,
                ..Default::default()
            };
            images.build(&name, &opts, &mut |line| println!("{line}"))?;
        }
        ImageCmd::Import { name, source, note } => {
            let prev = images.published(&name)?;
            announce(&name, images.import(&name, &source, &note, &[])?, prev);
        }
        ImageCmd::Enter {
            name,
            note,
            strip,
            command,
        } => {
            let prev = images.published(&name)?;
            let meta = images.enter(
                &name,
                &EnterOptions {
                    command,
                    note,
                    extra_strip: strip,
                },
            )?;
            announce(&name, meta, prev);
        }
        ImageCmd::List => {
            let list = images.list()?;
            if list.is_empty() {
                println!(
                    "no images in {}; create one with `rollout image build` or `import`",
                    images.root().display()
                );
            }
            println!(
                "{:<20} {:>9} {:>8} {:>12} {:<20}",
                "NAME", "PUBLISHED", "SERIALS", "SIZE", "CREATED"
            );
            for s in list {
                let (size, created) = s
                    .published_meta
                    .as_ref()
                    .map(|m| (mib(m.size_bytes), m.created.clone()))
                    .unwrap_or_default();
                println!(
                    "{:<20} {:>9} {:>8} {:>12} {:<20}{}",
                    s.name,
                    s.published
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.serials.len(),
                    size,
                    created,
                    s.locked_by
                        .map(|h| format!("  [locked by {h}]"))
                        .unwrap_or_default()
                );
            }
            if let Some(from) = &config.mirroring.mirror_from {
                match super::mirror::status::MirrorStatus::read(&config.state_dir) {
                    Some(status) => println!("{status}"),
                    None => println!(
                        "mirror of {from}: no status yet (`rollout serve` writes it once it runs)"
                    ),
                }
            }
        }
        ImageCmd::Show { name } => {
            let s = images.summary(&name)?;
            println!("image:     {name}");
            println!("path:      {}", images.image_dir(&name).display());
            match &s.published_meta {
                Some(m) => {
                    println!(
                        "published: serial {} ({}, {} files, {})",
                        m.serial,
                        m.created,
                        m.file_count,
                        mib(m.size_bytes)
                    );
                    if !m.note.is_empty() {
                        println!("note:      {}", m.note);
                    }
                }
                None => println!("published: nothing yet"),
            }
            println!("serials:   {:?}", s.serials);
            let mut modules = vec![name.clone()];
            modules.extend(
                s.serials
                    .iter()
                    .map(|n| super::rsyncd::serial_module(&name, *n)),
            );
            println!("rsync:     modules {}", modules.join(" "));
            if let Some(h) = s.locked_by {
                println!("locked:    by {h}");
            }
            if let Some(c) = images.config(&name) {
                if !c.excludes.is_empty() {
                    println!(
                        "node-local (besides the defaults): {}",
                        c.excludes.join(" ")
                    );
                }
                for m in &c.mounts {
                    let options = if m.options.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", m.options)
                    };
                    println!(
                        "mounted during enter: {} on {} [{}]{options}",
                        m.source, m.target, m.fstype
                    );
                }
            }
        }
        ImageCmd::History { name } => {
            let published = images.published(&name)?;
            for m in images.history(&name)? {
                let changes = match &m.changes {
                    Some(c) => c.summary(),
                    None => "(new)".into(),
                };
                println!(
                    "{}{:>4}  {}  {:>12}  {:>8} files  {:<14} {}",
                    if Some(m.serial) == published {
                        "*"
                    } else {
                        " "
                    },
                    m.serial,
                    m.created,
                    mib(m.size_bytes),
                    m.file_count,
                    changes,
                    m.note
                );
                if let Some(c) = &m.changes {
                    for (sign, list, count) in [
                        ("+", &c.added, c.added_count),
                        ("~", &c.changed, c.changed_count),
                        ("-", &c.removed, c.removed_count),
                    ] {
                        for p in list.iter().take(20) {
                            println!("        {sign} {p}");
                        }
                        if count > 20 {
                            println!("        {sign} … and {} more", count - 20);
                        }
                    }
                }
            }
        }
        ImageCmd::Rollback { name, serial } => {
            images.rollback(&name, serial)?;
            println!("published {name} serial {serial}");
        }
        ImageCmd::Prune { name, keep } => {
            let installing = being_installed(config, &name)?;
            let in_use: Vec<u64> = installing.iter().map(|(s, _)| *s).collect();
            for (serial, host) in &installing {
                println!("keeping serial {serial}: {host} is installing it");
            }
            let removed = images.prune(&name, keep, &in_use)?;
            if removed.is_empty() {
                println!("nothing to prune");
            } else {
                println!("removed serials {removed:?}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_refuses_changes_and_points_at_the_primary() {
        let config = crate::config::Config::parse(
            "state_dir = \"/nonexistent\"\n[images]\nmirror_from = \"rsync://primary/\"\nmirror_password_file = \"/p\"\n",
        )
        .unwrap();
        for cmd in [
            ImageCmd::Import {
                name: "web".into(),
                source: "/x".into(),
                note: String::new(),
            },
            ImageCmd::Enter {
                name: "web".into(),
                note: String::new(),
                strip: vec![],
                command: vec![],
            },
            ImageCmd::Rollback {
                name: "web".into(),
                serial: 1,
            },
            ImageCmd::Prune {
                name: "web".into(),
                keep: 1,
            },
        ] {
            let e = run(cmd, &config).unwrap_err().to_string();
            assert!(
                e.contains("mirrors its images from rsync://primary/")
                    && e.contains("on the primary"),
                "{e}"
            );
        }
        assert!(refuse_on_mirror(&ImageCmd::List, &config).is_ok());
    }
}
