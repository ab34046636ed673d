//! Shared test fixtures.

use rollout::wire::*;

pub fn plan() -> InstallPlan {
    InstallPlan {
        install_id: "inst-1".into(),
        token: "tok".into(),
        mac: "52:54:00:00:00:01".into(),
        hostname: "node\"1\\".into(),
        server_url: "http://10.44.0.1:8080".into(),
        network: NetworkPlan::Dhcp,
        image: ImageRef {
            name: "default".into(),
            serial: 7,
            rsync_url: "rsync://10.44.0.1/default-7/".into(),
        },
        disk: DiskSelector::default(),
        layout: Layout::default(),
        bootloader: Bootloader::Auto,
        excludes: vec!["/etc/ssh/ssh_host_*".into()],
        files: vec![FileSpec {
            path: "/etc/motd".into(),
            mode: 0o640,
            contents: "hello\n".into(),
        }],
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA rollout-server".into()],
        kernel_cmdline: "console=ttyS0,115200".into(),
        sync_interval_secs: 0,
        on_failure: FailurePolicy::default(),
    }
}
