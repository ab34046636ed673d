//! The demo's last act, the maintenance phase of a cluster: change the golden
//! image inside `rollout image enter`, publish serial N+1, bring every running
//! node to it in place with `rollout sync --all`, and show what each node runs.
//! The CLI's own output goes straight to the terminal: this is what an
//! operator types and sees.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::proc::command_line;

/// What the demo changes in the image: a line every node shows at login.
pub const MOTD_LINE: &str = "rollout demo: this line was added in `rollout image enter`";

fn run_shown(mut cmd: Command, shown: &str, say: &mut dyn FnMut(&str)) -> Result<()> {
    say(&format!("\n$ {shown}"));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            cmd: command_line(&cmd),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: shown.to_string(),
            status: status.to_string(),
            stderr: "see its output above".into(),
        })
    }
}

/// The published serial of `image`, from its `published -> serials/N` link.
pub fn published_serial(state_dir: &Path, image: &str) -> Option<u64> {
    let link = std::fs::read_link(state_dir.join("images").join(image).join("published")).ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Runs the phase against the lab's running server; returns the new serial.
pub fn maintain(lab: &Lab, rollout: &Path, image: &str, say: &mut dyn FnMut(&str)) -> Result<u64> {
    let config = lab.dir().join("rollout.toml");
    let before = published_serial(&lab.state_dir(), image);
    say(&format!(
        "\n== maintenance: change image {image} (serial {}), publish, update the running nodes in place",
        before.map_or("none".into(), |s| s.to_string())
    ));
    // On the host, not in the lab namespace: apt in the image may need the mirror.
    let script = format!("echo '{MOTD_LINE}' >> /etc/motd");
    let mut enter = Command::new(rollout);
    enter.arg("-c").arg(&config).args([
        "image",
        "enter",
        image,
        "--note",
        "demo: motd line",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    run_shown(
        enter,
        &format!("rollout image enter {image} -- sh -c \"{script}\""),
        say,
    )?;
    let serial = published_serial(&lab.state_dir(), image)
        .filter(|s| Some(*s) != before)
        .ok_or_else(|| Error::Command {
            cmd: "rollout image enter".into(),
            status: "no new serial".into(),
            stderr: format!("image {image} still publishes {before:?}"),
        })?;
    // The server rewrites rsyncd.conf every 2 s; nodes must find the module.
    let module = format!("[{image}-{serial}]");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(lab.state_dir().join("rsyncd.conf"))
        .unwrap_or_default()
        .contains(&module)
    {
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("rsync module {module} in rsyncd.conf"),
                after: Duration::from_secs(30),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let in_lab = |args: &[&str]| {
        let mut cmd = lab.netns().command(&rollout.to_string_lossy());
        cmd.arg("-c").arg(&config).args(args);
        cmd
    };
    run_shown(in_lab(&["sync", "--all"]), "rollout sync --all", say)?;
    run_shown(
        in_lab(&[
            "exec",
            "--all",
            "--",
            "cat /etc/rollout/serial; tail -n 1 /etc/motd",
        ]),
        "rollout exec --all -- 'cat /etc/rollout/serial; tail -n 1 /etc/motd'",
        say,
    )?;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_published_serial_from_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("images/default");
        std::fs::create_dir_all(img.join("serials/7")).unwrap();
        assert_eq!(super::published_serial(dir.path(), "default"), None);
        std::os::unix::fs::symlink("serials/7", img.join("published")).unwrap();
        assert_eq!(super::published_serial(dir.path(), "default"), Some(7));
    }
}
