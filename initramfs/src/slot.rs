//! Asking the server for a copy slot before the rsync copy: when a rack boots
//! at once, the server lets a few nodes copy and queues the rest
//! (`rollout::admission`), instead of the rsync daemon refusing the excess
//! and the installer burning its retries. While queued the installer says
//! "queued, position K of N" on its console and in a `queued` event.

use std::time::Duration;

use rollout::wire::{paths, SlotAnswer};

use crate::http_client;

pub fn slot_url(server: &str, install_id: &str) -> String {
    format!("{server}{}/{install_id}/slot", paths::INSTALLS)
}

/// What one slot request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Answer(SlotAnswer),
    /// The server refused or does not know the call (an older server answers
    /// 404 without a JSON error): copying without a slot is all that is left.
    Refused(String),
    /// No answer (connection, timeout): worth asking again.
    Unreachable(String),
}

/// One `POST …/slot` with the install token.
pub fn ask(server: &str, install_id: &str, token: &str) -> Asked {
    let url = slot_url(server, install_id);
    match http_client::post_json(&url, Some(token), b"", Duration::from_secs(10)) {
        Err(e) => Asked::Unreachable(format!("POST {url}: {e}")),
        Ok(r) if r.status == 200 => match serde_json::from_slice(&r.body) {
            Ok(a) => Asked::Answer(a),
            Err(e) => Asked::Refused(format!(
                "POST {url}: an answer this installer cannot read ({e})"
            )),
        },
        Ok(r) if r.status >= 500 => Asked::Unreachable(format!(
            "POST {url} answered {}: {}",
            r.status,
            r.text().trim()
        )),
        Ok(r) => Asked::Refused(format!(
            "POST {url} answered {}: {}",
            r.status,
            r.text().trim()
        )),
    }
}

/// How long the installer keeps asking a server it cannot reach before it
/// copies anyway (rsync's own retries follow).
pub const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);
/// A queue place is reported when it changes, at most this often (hundreds of
/// waiting nodes would otherwise write the server's database many times a second).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Asks until the server grants a slot (or cannot be asked), reporting the
/// queue place through `on_queue(position, queued)`: the first time, then
/// when it changed and [`REPORT_EVERY`] has passed. `pause` waits.
/// Returns the line that says how the copy was admitted.
pub fn wait_for_slot(
    ask: &mut dyn FnMut() -> Asked,
    on_queue: &mut dyn FnMut(u32, u32),
    pause: &mut dyn FnMut(Duration),
) -> String {
    let mut waited = Duration::ZERO;
    let mut unreachable = Duration::ZERO;
    let mut reported: Option<(Duration, u32)> = None;
    loop {
        match ask() {
            Asked::Answer(SlotAnswer::Granted { active, max, .. }) => {
                return match reported {
                    None => format!("copy slot granted ({active} of {max} copying)"),
                    Some(_) => format!(
                        "copy slot granted after {} s in the queue ({active} of {max} copying)",
                        waited.as_secs()
                    ),
                }
            }
            Asked::Answer(SlotAnswer::Wait {
                position,
                queued,
                retry_secs,
            }) => {
                unreachable = Duration::ZERO;
                let due = match reported {
                    None => true,
                    Some((at, p)) => p != position && waited >= at + REPORT_EVERY,
                };
                if due {
                    on_queue(position, queued);
                    reported = Some((waited, position));
                }
                // 0: the server held this request until now; ask again at once.
                let d = Duration::from_secs(retry_secs.min(30));
                pause(d);
                waited += d;
            }
            Asked::Refused(why) => return format!("copying without a slot: {why}"),
            Asked::Unreachable(why) => {
                if unreachable >= UNREACHABLE_LIMIT {
                    return format!(
                        "copying without a slot: no answer for {} s ({why})",
                        unreachable.as_secs()
                    );
                }
                let d = Duration::from_secs(2);
                pause(d);
                unreachable += d;
                waited += d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(position: u32, queued: u32) -> Asked {
        Asked::Answer(SlotAnswer::Wait {
            position,
            queued,
            retry_secs: 2,
        })
    }

    fn granted() -> Asked {
        Asked::Answer(SlotAnswer::Granted {
            lease_secs: 180,
            active: 2,
            max: 2,
        })
    }

    fn run(answers: Vec<Asked>) -> (String, Vec<(u32, u32)>, Duration) {
        let mut it = answers.into_iter();
        let mut reports = vec![];
        let mut slept = Duration::ZERO;
        let line = wait_for_slot(
            &mut || it.next().expect("asked once too often"),
            &mut |p, q| reports.push((p, q)),
            &mut |d| slept += d,
        );
        (line, reports, slept)
    }

    #[test]
    fn url_uses_the_wire_path() {
        assert_eq!(
            slot_url("http://10.44.0.1", "abc"),
            "http://10.44.0.1/api/v1/installs/abc/slot"
        );
    }

    #[test]
    fn granted_at_once_copies_without_a_report() {
        let (line, reports, slept) = run(vec![granted()]);
        assert_eq!(line, "copy slot granted (2 of 2 copying)");
        assert!(reports.is_empty());
        assert_eq!(slept, Duration::ZERO);
    }

    #[test]
    fn a_queued_node_reports_its_place_when_it_changes_at_most_every_ten_seconds() {
        // 2 s per retry: 5 at 0 s (reported), 4 at 2 s (too soon), 3 from
        // 4 s to 10 s (reported at 10 s), 2 at 12 s and 1 at 14 s (too soon).
        let mut answers = vec![wait(5, 5), wait(4, 5)];
        answers.extend((0..4).map(|_| wait(3, 5)));
        answers.push(wait(2, 5));
        answers.push(wait(1, 5));
        answers.push(granted());
        let (line, reports, slept) = run(answers);
        assert_eq!(reports, [(5, 5), (3, 5)]);
        assert_eq!(slept, Duration::from_secs(16));
        assert!(line.contains("after 16 s in the queue"), "{line}");
    }

    #[test]
    fn an_older_server_or_a_refusal_means_copying_without_a_slot() {
        let (line, _, _) = run(vec![Asked::Refused("404".into())]);
        assert!(line.starts_with("copying without a slot: 404"), "{line}");
    }

    #[test]
    fn an_unreachable_server_is_asked_again_then_given_up_on() {
        let (line, _, _) = run(vec![Asked::Unreachable("timeout".into()), granted()]);
        assert_eq!(line, "copy slot granted (2 of 2 copying)");
        let many = (0..40)
            .map(|_| Asked::Unreachable("refused".into()))
            .collect();
        let (line, _, slept) = run(many);
        assert!(line.contains("no answer for 60 s"), "{line}");
        assert_eq!(slept, Duration::from_secs(60));
    }
}
