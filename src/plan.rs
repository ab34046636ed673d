//! The install plan a node is handed (`POST /api/v1/plan/{mac}`): a pure function of
//! its record, the config, the serial being served and the server's SSH keys. The
//! HTTP handler does the lookups and side effects around it.

use crate::config::ValidConfig;
use crate::inventory::NodeRecord;
use crate::wire::{self, InstallPlan};

/// The plan for `record`'s install of `serial` of its image. `record` is the one
/// `Inventory::begin_install` returned: it carries the install id and token.
pub fn install_plan(
    record: &NodeRecord,
    config: &ValidConfig,
    serial: u64,
    ssh_keys: &[String],
) -> InstallPlan {
    let image = &record.image;
    let layout = config.layout_for(&record.mac, record.root_mib, record.swap_mib);
    // Nothing is copied under a network mount: the mount point itself stays.
    let mut excludes = config.excludes_for(image);
    excludes.extend(layout.network_paths().iter().map(|m| format!("{m}/*")));
    let address = config
        .server
        .address
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let reboot_after = config.install.reboot_after_failure;
    InstallPlan {
        install_id: record.install_id.clone().unwrap_or_default(),
        token: record.token.clone().unwrap_or_default(),
        mac: record.mac.clone(),
        hostname: record.hostname.clone(),
        server_url: config.http_base_url(),
        network: wire::NetworkPlan::Dhcp,
        link: config
            .node_by_mac(&record.mac)
            .map(|n| n.link())
            .unwrap_or_default(),
        image: wire::ImageRef {
            name: image.clone(),
            serial,
            rsync_url: format!(
                "rsync://{address}:{}/{}/",
                config.server.rsync_port,
                crate::images::rsyncd::serial_module(image, serial)
            ),
            // Filled in by the server from its rsync (`http::api::plan`).
            rsync_checksums: vec![],
            // From the serial's meta, by the same handler.
            sparse_files: None,
        },
        disk: wire::DiskSelector {
            path: record.disk.clone(),
            declared: record.declared_or_approved(),
        },
        layout,
        bootloader: wire::Bootloader::Auto,
        excludes,
        files: vec![],
        ssh_authorized_keys: ssh_keys.to_vec(),
        kernel_cmdline: config.install.kernel_cmdline.clone(),
        on_failure: wire::FailurePolicy {
            reboot_after_secs: (reboot_after > 0).then_some(reboot_after),
        },
        sync_interval_secs: config.install.sync_interval,
        keep_identity: config.install.keep_identity,
        rsync: crate::inventory::secrets::install_credential(record),
        // The node's secret exists in clear text only in `start_install`'s
        // answer: the handler puts it here.
        node: wire::NodeCredential::default(),
        multicast: config
            .install
            .multicast
            .enabled
            .then_some(wire::multicast::MulticastPlan {
                wait_secs: config.install.multicast.wait_secs,
            }),
        tar_prefill: config.install.tar_prefill,
        block_image: config.install.block_image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MachineFacts};
    use crate::inventory::{NodeState, Source};

    fn config(extra: &str) -> ValidConfig {
        let text = format!(
            "state_dir = \"/var/lib/rollout\"\n[server]\naddress = \"10.44.0.1\"\nhttp_port = 8080\nrsync_port = 8873\n{extra}"
        );
        let facts = MachineFacts {
            interface_addr: None,
            tftp_root: "/usr/lib/ipxe".into(),
        };
        ValidConfig::new(Config::parse(&text).unwrap(), facts).unwrap()
    }

    fn record() -> NodeRecord {
        let mut r = NodeRecord::new(
            "52:54:00:aa:00:01",
            "rack1-node1",
            "web",
            Source::Config,
            NodeState::Installing,
        );
        r.install_id = Some("i-1".into());
        r.token = Some("t-1".into());
        r.install_rsync = Some("pw-1".into());
        r
    }

    #[test]
    fn the_plan_names_the_serial_module_and_the_install_credentials() {
        let keys = vec!["ssh-ed25519 AAAA rollout-server".to_string()];
        let p = install_plan(&record(), &config(""), 7, &keys);
        assert_eq!(p.install_id, "i-1");
        assert_eq!(p.token, "t-1");
        assert_eq!(p.mac, "52:54:00:aa:00:01");
        assert_eq!(p.hostname, "rack1-node1");
        assert_eq!(p.server_url, "http://10.44.0.1:8080");
        assert_eq!(p.image.name, "web");
        assert_eq!(p.image.serial, 7);
        assert_eq!(p.image.rsync_url, "rsync://10.44.0.1:8873/web-7/");
        assert_eq!(p.ssh_authorized_keys, keys);
        assert_eq!(p.kernel_cmdline, "console=ttyS0,115200");
        assert_eq!(p.on_failure.reboot_after_secs, Some(60));
        assert_eq!(p.sync_interval_secs, 0);
        assert!(
            p.keep_identity,
            "a reinstall keeps the node's host keys by default"
        );
        assert_eq!(p.disk.path, None);
        assert!(p.disk.declared, "a [[node]] may be installed over old data");
        assert_eq!(
            (p.rsync.user.as_str(), p.rsync.password.as_str()),
            ("install-525400aa0001", "pw-1")
        );
    }

    #[test]
    fn the_nodes_bond_and_vlan_reach_its_plan() {
        let c = config(
            "[[node]]\nmac = \"52:54:00:AA:00:01\"\nhostname = \"rack1-node1\"\nvlan = 100\nbond = { mode = \"active-backup\", interfaces = [\"52:54:00:aa:00:01\", \"52:54:00:aa:00:02\"] }\n",
        );
        let p = install_plan(&record(), &c, 1, &[]);
        assert_eq!(p.link.vlan, Some(100));
        let bond = p.link.bond.expect("the bond is in the plan");
        assert_eq!(bond.mode, wire::BondMode::ActiveBackup);
        assert_eq!(bond.interfaces, ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]);
        assert!(
            install_plan(&record(), &config(""), 1, &[]).link.is_plain(),
            "a node without settings (or not in the file) gets its boot NIC as it is"
        );
    }

    #[test]
    fn a_stranger_is_declared_only_once_an_operator_approves_it() {
        let mut r = record();
        r.source = Source::Discovered;
        assert!(!install_plan(&r, &config(""), 1, &[]).disk.declared);
        r.approved = true;
        assert!(install_plan(&r, &config(""), 1, &[]).disk.declared);
        r.source = Source::Api;
        r.approved = false;
        assert!(install_plan(&r, &config(""), 1, &[]).disk.declared);
    }

    #[test]
    fn the_record_sizes_the_layout_and_the_image_adds_excludes() {
        let mut r = record();
        r.root_mib = Some(12345);
        r.disk = Some("/dev/vdb".into());
        let c = config(
            "[install]\nreboot_after_failure = 0\nsync_interval = 300\nkeep_identity = false\n[[image]]\nname = \"web\"\nexcludes = [\"/var/lib/site/\"]\n",
        );
        let p = install_plan(&r, &c, 3, &[]);
        assert_eq!(
            p.layout,
            wire::Layout::default().with_sizes(Some(12345), None)
        );
        assert_eq!(p.layout.partitions[0].size, wire::Size::Mib(12345));
        assert_eq!(p.disk.path.as_deref(), Some("/dev/vdb"));
        assert_eq!(
            p.on_failure.reboot_after_secs, None,
            "0 waits for the server"
        );
        assert_eq!(p.sync_interval_secs, 300);
        assert!(!p.keep_identity);
        assert!(p.excludes.iter().any(|e| e == "/var/lib/site/"));
        assert!(wire::DEFAULT_EXCLUDES
            .iter()
            .all(|d| p.excludes.iter().any(|e| e == d)));
    }

    #[test]
    fn the_nodes_layout_is_in_the_plan_and_network_mounts_are_not_copied() {
        let c = config(
            "[[layout]]\nname = \"compute\"\npartitions = [{ mount = \"/\", size = \"1GiB\", fs = \"ext4\" }]\nmounts = [{ mount = \"/usr\", type = \"nfs\", source = \"nfs1:/export/usr\" }, { mount = \"/tmp\", type = \"tmpfs\" }]\n[[node]]\nmac = \"52:54:00:aa:00:01\"\nhostname = \"rack1-node1\"\nlayout = \"compute\"\n",
        );
        let p = install_plan(&record(), &c, 1, &[]);
        assert_eq!(p.layout.name, "compute");
        assert_eq!(p.layout.mounts.len(), 2);
        assert!(p.excludes.iter().any(|e| e == "/usr/*"), "{:?}", p.excludes);
        assert!(
            !p.excludes.iter().any(|e| e == "/usr" || e == "/usr/"),
            "the mount point itself is copied (created)"
        );
        // Another node, not in the file: the built-in layout, /usr copied.
        let mut other = record();
        other.mac = "52:54:00:aa:00:02".into();
        let p = install_plan(&other, &c, 1, &[]);
        assert_eq!(p.layout, wire::Layout::default());
        assert!(!p.excludes.iter().any(|e| e.starts_with("/usr")));
    }
}
