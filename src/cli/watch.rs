//! `rollout watch`: the node table redrawn live from the server's event stream,
//! with progress bars and ETAs; `--until-done` ends with a table of the
//! installs it saw once none is running.

use super::nodes::{align, eta_cell, progress_bar, render_table};
use crate::api_client::Client;
use crate::inventory::{NodeRecord, NodeState};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Print the table once and exit.
    #[arg(long)]
    pub once: bool,
    /// Exit once every install seen running has ended, printing a table of
    /// them (exit status 1 if one failed).
    #[arg(long)]
    pub until_done: bool,
}

/// Tracks which installs the watch has seen running.
#[derive(Debug, Default)]
pub struct Watched {
    pub seen: BTreeSet<String>,
}

impl Watched {
    /// Notes the nodes installing now; true once some were seen and none is
    /// installing any more.
    pub fn all_done(&mut self, nodes: &BTreeMap<String, NodeRecord>) -> bool {
        let running: Vec<&String> = nodes
            .values()
            .filter(|n| n.state == NodeState::Installing)
            .map(|n| &n.mac)
            .collect();
        self.seen.extend(running.iter().map(|m| m.to_string()));
        !self.seen.is_empty() && running.is_empty()
    }
}

/// The installs the watch saw: how each ended, how long it took, how fast its
/// copy went.
pub fn final_table(nodes: &BTreeMap<String, NodeRecord>, seen: &BTreeSet<String>) -> String {
    let mut rows = vec![vec![
        "HOSTNAME".to_string(),
        "RESULT".into(),
        "SERIAL".into(),
        "INSTALL TIME".into(),
        "COPY RATE".into(),
        "ERROR".into(),
    ]];
    let mut list: Vec<&NodeRecord> = seen.iter().filter_map(|m| nodes.get(m)).collect();
    list.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    for n in list {
        let took = match (n.install_started, n.installed_at, n.state) {
            (Some(s), Some(e), NodeState::Installed) => {
                crate::inventory::progress::human_duration(e.saturating_sub(s))
            }
            _ => "-".into(),
        };
        rows.push(vec![
            n.hostname.clone(),
            n.state.as_str().into(),
            n.serial.map_or("-".into(), |s| s.to_string()),
            took,
            n.copy_rate
                .map_or("-".into(), |r| format!("{}/s", crate::http::human_bytes(r))),
            n.trouble(),
        ]);
    }
    align(rows)
}

/// Follows the server's event stream and redraws the table (or, when stdout is
/// not a terminal, prints one line per change).
pub fn watch(args: WatchArgs, c: &Client) -> anyhow::Result<()> {
    // Subscribed before the list is read: a change made in between (even a
    // whole install) is in the stream. A change made before is in both, and
    // the stream's copy is no older than the list's.
    let events = if args.once { None } else { Some(c.events()?) };
    let mut nodes: BTreeMap<String, NodeRecord> = c
        .get::<Vec<NodeRecord>>("/api/v1/nodes")?
        .into_iter()
        .map(|n| (n.mac.clone(), n))
        .collect();
    let tty = std::io::stdout().is_terminal();
    let draw = |nodes: &BTreeMap<String, NodeRecord>| {
        let mut list: Vec<NodeRecord> = nodes.values().cloned().collect();
        list.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = write!(out, "{}", render_table(&list, crate::clock::now_unix()));
        let _ = out.flush();
    };
    draw(&nodes);
    let Some(events) = events else {
        return Ok(()); // --once
    };
    let mut watched = Watched::default();
    let reader = std::io::BufReader::new(events);
    if args.until_done && watched.all_done(&nodes) {
        return finish(&nodes, &watched, tty);
    }
    for line in reader.lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(n) = serde_json::from_str::<NodeRecord>(data.trim()) else {
            continue;
        };
        if tty {
            nodes.insert(n.mac.clone(), n);
            draw(&nodes);
        } else {
            println!(
                "{}  {}  {}  {}  eta {}{}",
                n.hostname,
                n.state.as_str(),
                n.stage_text(),
                progress_bar(&n, 20),
                eta_cell(&n),
                match n.trouble() {
                    t if t.is_empty() => t,
                    t => format!("  {t}"),
                }
            );
            nodes.insert(n.mac.clone(), n);
        }
        if args.until_done && watched.all_done(&nodes) {
            return finish(&nodes, &watched, tty);
        }
    }
    Ok(())
}

fn finish(
    nodes: &BTreeMap<String, NodeRecord>,
    watched: &Watched,
    tty: bool,
) -> anyhow::Result<()> {
    if tty {
        print!("\x1b[H\x1b[2J");
    }
    println!("all installs ended:");
    print!("{}", final_table(nodes, &watched.seen));
    let failed = watched
        .seen
        .iter()
        .filter(|m| nodes.get(*m).is_some_and(|n| n.state == NodeState::Failed))
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} installs failed", watched.seen.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Source;

    fn node(mac: &str, name: &str, state: NodeState) -> NodeRecord {
        NodeRecord::new(mac, name, "default", Source::Config, state)
    }

    #[test]
    fn done_once_every_install_seen_has_ended() {
        let mut w = Watched::default();
        let mut nodes = BTreeMap::new();
        nodes.insert("a".to_string(), node("a", "n1", NodeState::Pending));
        assert!(!w.all_done(&nodes), "nothing ran yet");
        nodes.insert("a".into(), node("a", "n1", NodeState::Installing));
        nodes.insert("b".into(), node("b", "n2", NodeState::Installing));
        assert!(!w.all_done(&nodes));
        nodes.insert("a".into(), node("a", "n1", NodeState::Installed));
        assert!(!w.all_done(&nodes), "n2 still runs");
        nodes.insert("b".into(), node("b", "n2", NodeState::Failed));
        assert!(w.all_done(&nodes));
        assert_eq!(w.seen.len(), 2);
    }

    #[test]
    fn final_table_has_result_time_and_rate() {
        let mut a = node("a", "n1", NodeState::Installed);
        a.install_started = Some(1000);
        a.installed_at = Some(1125);
        a.serial = Some(4);
        a.copy_rate = Some(50 << 20);
        let mut b = node("b", "n2", NodeState::Failed);
        b.last_error = Some("disk too small".into());
        let c = node("c", "n3", NodeState::Installed);
        let nodes: BTreeMap<String, NodeRecord> =
            [a, b, c].into_iter().map(|n| (n.mac.clone(), n)).collect();
        let seen: BTreeSet<String> = ["a".to_string(), "b".into()].into();
        let t = final_table(&nodes, &seen);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "header and the two watched installs: {t}");
        assert!(
            lines[1].starts_with("n1") && lines[1].contains("installed"),
            "{t}"
        );
        assert!(
            lines[1].contains("2m05s") && lines[1].contains("50.0 MiB/s"),
            "{t}"
        );
        assert!(
            lines[2].contains("failed") && lines[2].ends_with("disk too small"),
            "{t}"
        );
    }
}
