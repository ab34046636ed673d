//! `scripts/setup.sh` checks what is on disk after installing, not apt's exit
//! code. Here a file it relies on is hidden (a tmpfs over /usr/lib/ipxe in a
//! private mount namespace, so the host is untouched) and apt cannot bring it
//! back (an apt-get on PATH that fails, so nothing is downloaded): setup must
//! fail and name the missing file and its package.

use std::path::Path;
use std::process::Command;

#[test]
fn setup_fails_naming_a_file_it_cannot_provide() {
    if !testkit::prereq::require_root("a private mount namespace")
        || !testkit::prereq::require_tools(&[("unshare", "util-linux")])
    {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let fake = tempfile::tempdir().unwrap();
    let apt = fake.path().join("apt-get");
    std::fs::write(&apt, "#!/bin/sh\necho 'E: unable to fetch' >&2\nexit 100\n").unwrap();
    Command::new("chmod").arg("755").arg(&apt).status().unwrap();
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount --make-rprivate / && mount -t tmpfs none /usr/lib/ipxe && exec bash {}",
            script.display()
        ))
        .env("PATH", path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "setup passed without the iPXE loaders:\n{text}"
    );
    assert!(
        text.contains("file /usr/lib/ipxe/undionly.kpxe is missing (Debian package ipxe)"),
        "{text}"
    );
    assert!(text.contains("setup: FAILED"), "{text}");
    assert!(
        Path::new("/usr/lib/ipxe/undionly.kpxe").exists(),
        "the host's own files were touched"
    );
}
