//! The primary's side of mirroring: the `_mirror` module of its rsync daemon.

use super::super::rsyncd::{check_value, RsyncUser, RsyncdSettings, NOBODY};
use super::super::store::Images;
use super::super::ImageError;
use crate::config::{MIRROR_MODULE, MIRROR_USER};
use std::fmt::Write as _;

/// The module mirrors copy from: every image with its serials, metadata and
/// `published` link, so a mirror serves them exactly as this server does. A
/// change in progress (`work/`, the lock) and a mirror's own staging copies
/// are not part of any serial and stay out.
pub(crate) fn render(
    c: &mut String,
    s: &RsyncdSettings,
    hosts: &[String],
    users: &[RsyncUser],
) -> Result<(), ImageError> {
    if hosts.is_empty() {
        return Err(ImageError::BadSetting("mirror hosts allow is empty".into()));
    }
    for h in hosts {
        check_value("mirror hosts allow", h)?;
    }
    let path = Images::new(&s.state_dir).root().to_path_buf();
    check_value("path", &path.to_string_lossy())?;
    let reader = if users.iter().any(|u| u.user == MIRROR_USER) {
        MIRROR_USER
    } else {
        NOBODY
    };
    let _ = writeln!(c, "\n[{MIRROR_MODULE}]");
    let _ = writeln!(c, "    path = {}", path.display());
    let _ = writeln!(c, "    comment = every image, for mirrors");
    let _ = writeln!(c, "    hosts allow = {}", hosts.join(" "));
    let _ = writeln!(c, "    auth users = {reader}");
    let _ = writeln!(
        c,
        "    exclude = /*/work/ /*/dirty.lock /*/.published.* /*/mirror-staging/"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::rsyncd::{render_config, test_settings as settings, ModuleSpec};
    use super::*;

    /// A primary's store goes to the mirror user only, from the mirror hosts only,
    /// without the work in progress; a primary without the password exports nothing.
    #[test]
    fn the_mirror_module_is_for_the_mirror_user_alone() {
        let mut s = settings();
        assert!(!render_config(&s, &[], &[]).unwrap().contains(MIRROR_MODULE));
        s.mirror_hosts = Some(vec!["10.45.0.0/24".into()]);
        let c = render_config(&s, &[], &[]).unwrap();
        assert!(
            c.ends_with("    auth users = rollout-nobody\n    exclude = /*/work/ /*/dirty.lock /*/.published.* /*/mirror-staging/\n"),
            "no mirror user, nobody may read it:\n{c}"
        );
        let mirror = RsyncUser {
            user: MIRROR_USER.into(),
            password: "pw".into(),
            image: MIRROR_MODULE.into(),
        };
        let node = RsyncUser {
            user: "node-1".into(),
            password: "pw".into(),
            image: "web".into(),
        };
        let web = ModuleSpec {
            name: "web-1".into(),
            image: "web".into(),
            path: "/var/lib/rollout/images/web/serials/1/root".into(),
            comment: "c".into(),
        };
        let c = render_config(&s, &[web], &[mirror, node]).unwrap();
        let module = &c[c.find("[_mirror]").expect("exported")..];
        for line in [
            "    path = /var/lib/rollout/images\n",
            "    hosts allow = 10.45.0.0/24\n",
            "    auth users = rollout-mirror\n",
        ] {
            assert!(module.contains(line), "missing {line:?} in\n{module}");
        }
        let web_module = &c[c.find("[web-1]").unwrap()..c.find("[_mirror]").unwrap()];
        assert!(
            web_module.contains("auth users = node-1\n"),
            "the mirror user reads no node module: {web_module}"
        );
        s.mirror_hosts = Some(vec!["10.45.0.0/24\n[evil]".into()]);
        assert!(render_config(&s, &[], &[]).is_err());
    }
}
