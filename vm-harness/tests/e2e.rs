//! End-to-end installs: blank QEMU nodes PXE-boot from `rollout serve` in a
//! private namespace, install a golden image, reboot from their own disks and
//! phone home. Each test waits on the server's record of the node (state
//! `installed` and `booted_at` set), then inspects the disk from the host.
//!
//! Needs root, QEMU and the tools of scripts/setup.sh; otherwise each test fails
//! (a plain `cargo test` skips). The tests share one fixture (installer initramfs,
//! tiny image, Debian image, all cached under target/) and run one lab at a
//! time whatever `--test-threads` says. The Debian test builds the image once
//! (~2.5 min, needs the Debian mirror) and reuses it from target/e2e-images/.

mod e2e_support;

use std::time::Duration;

use e2e_support::{assert_distinct_keys, check_disk, fixture, DiskFacts, E2eLab};
use vm_harness::config::{ImageConfig, ImageMount};
use vm_harness::demo::NodeProgress;
use vm_harness::e2e::ImageKind;
use vm_harness::Firmware;
use vm_harness::NetBoot;
use vm_harness::{Lab, LabOptions};

const GIB: u64 = 1 << 30;
/// `[install] sync_interval` of the Debian test.
const PULL_INTERVAL: u64 = 180;
/// Node-local by the Debian test image's `[[image]] excludes`.
const SITE_LOCAL_DIR: &str = "/var/lib/site-local/";
/// The package the Debian test's maintenance serial adds (and a rollback removes
/// again): one no other test puts into the shared cached image (`less` is the
/// image tests' own), or a rollback to the installed serial still has it.
const NEW_PACKAGE: &str = "hello";
/// Install plus boot from disk takes ~70 s under TCG; this leaves room for a
/// loaded CI machine without letting a stuck node eat the budget.
const INSTALL: Duration = Duration::from_secs(300);

fn install_and_check(name: &str, fw: Firmware) {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut t = E2eLab::new(a, name, &[fw], ImageKind::Tiny, 8 * GIB);
    t.lab.start_all().unwrap();
    let rec = t.wait_booted("node1", INSTALL);
    assert_eq!(rec.hostname, "node1");
    assert_eq!(rec.installs, 1);
    assert!(rec.serial.is_some(), "{}", rec.line());
    // The tiny image copies in under the 2-s progress interval: the record
    // still shows every byte.
    assert!(
        rec.total_bytes > 0 && rec.done_bytes == rec.total_bytes,
        "{} of {} bytes",
        rec.done_bytes,
        rec.total_bytes
    );
    let node = &mut t.lab.nodes_mut()[0];
    // The tiny image's rcS prints this from the installed system, after DHCP.
    node.wait_for_console(
        &"rollout-tiny: node1 booted from disk".into(),
        Duration::from_secs(30),
    )
    .unwrap();
    node.power_off().unwrap();
    let facts = check_disk(&node.disk_path(), "node1", fw);
    assert!(
        !facts.host_keys.is_empty(),
        "no SSH host keys were generated"
    );
}

#[test]
fn bios_node_installs_reboots_and_phones_home_from_disk() {
    install_and_check("e2e-bios", Firmware::Bios);
}

/// Two UEFI nodes whose NICs carry no iPXE ROM, so OVMF boots them itself as
/// a server's firmware would: node1 PXE-boots (arch 7, `snponly.efi` over
/// TFTP), node2 can only HTTP-boot (OVMF's PXE is off: the DHCP answer to
/// `HTTPClient` is a URL, and iPXE comes over HTTP). Both install and phone home from disk; node2 never
/// touched TFTP. Then the cycle that depends on the BootOrder the installer
/// wrote: a second power-on boots each from its disk without reinstalling, and
/// a reinstall requested on the server takes effect at the next power-on.
/// Every install here writes its root as the serial's block image
/// (`[install] block_image`), the reinstall over the first install's root:
/// the console says so, and from the host the root is an ext3 with a journal
/// filling its partition, which e2fsck passes.
#[test]
fn uefi_nodes_pxe_and_http_boot_install_boot_locally_and_reinstall() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut t = E2eLab::build(a, "e2e-uefi", ImageKind::Tiny, 8 * GIB, |lab| {
        lab.add_node(Firmware::Uefi)?
            .set_net_boot(NetBoot::FirmwarePxe);
        lab.add_node(Firmware::Uefi)?
            .set_net_boot(NetBoot::HttpOnly);
        let mut config = lab.config();
        config.install.block_image = true;
        Ok(config)
    });
    t.lab.start_all().unwrap();
    let mut boots = Vec::new();
    for name in ["node1", "node2"] {
        let rec = t.wait_booted(name, INSTALL);
        assert_eq!(rec.installs, 1, "{}", rec.line());
        assert_eq!(rec.firmware.as_deref(), Some("efi"), "{}", rec.line());
        boots.push(rec.boot_id.clone().expect("phone-home sends a boot id"));
    }
    let log = t.server_log();
    // TFTP log lines carry the client's address: node1 is 10.44.0.11, node2 .12.
    assert!(
        log.lines()
            .any(|l| l.contains("client=10.44.0.11") && l.contains("sent snponly.efi")),
        "node1 (PXE) fetched no snponly.efi over TFTP: the control for node2's check failed"
    );
    let node2_tftp: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tftp{client=10.44.0.12"))
        .collect();
    assert!(
        node2_tftp.is_empty(),
        "node2 (HTTP boot) used TFTP: {node2_tftp:?}"
    );
    assert!(
        log.lines().any(|l| l.contains("mac=52:54:00:00:00:02")
            && l.contains("http http://10.44.0.1/ipxe/snponly.efi")),
        "node2's firmware was never answered with the HTTP-boot URL of snponly.efi"
    );
    let mut before = Vec::new();
    for (i, node) in t.lab.nodes_mut().iter_mut().enumerate() {
        assert_wrote_block_image(node, 0);
        before.push(booted_disk(node, &format!("node{}", i + 1), 0));
        node.start().unwrap();
    }
    // Powered on again: both come up from their disks, nothing reinstalls.
    for (i, name) in ["node1", "node2"].iter().enumerate() {
        let first = boots[i].clone();
        let again = t.wait_record(name, "a phone-home from disk", INSTALL, |r| {
            r.is_done() && r.boot_id.as_deref().is_some_and(|b| b != first)
        });
        assert_eq!(again.installs, 1, "{name}: the second power-on reinstalled");
    }
    // A reinstall requested on the server takes effect at the next power-on.
    for name in ["node1", "node2"] {
        t.cli(a, &["node", "reinstall", name]);
    }
    let mut marks = Vec::new();
    for node in t.lab.nodes_mut() {
        marks.push(node.console_mark());
        node.restart().unwrap();
    }
    for name in ["node1", "node2"] {
        let rec = t.wait_record(name, "the reinstall and its phone-home", INSTALL, |r| {
            r.installs == 2 && r.is_done()
        });
        assert_eq!(rec.installs, 2);
    }
    // The reinstall kept each node's identity (`[install] keep_identity`): the
    // installer read it from the old root before partitioning.
    for (i, node) in t.lab.nodes_mut().iter_mut().enumerate() {
        let name = format!("node{}", i + 1);
        assert_wrote_block_image(node, marks[i]);
        let after = booted_disk(node, &name, marks[i]);
        assert_eq!(
            after.machine_id, before[i].machine_id,
            "{name}: the reinstall did not keep its machine-id"
        );
        assert_eq!(
            after.host_keys, before[i].host_keys,
            "{name}: the reinstall did not keep its SSH host keys"
        );
    }
}

/// The install after `mark` wrote the block image (no rsync copy).
fn assert_wrote_block_image(node: &vm_harness::qemu::Node, mark: u64) {
    let text = vm_harness::console::read_from(&node.console_log(), mark);
    assert!(
        text.contains("copy: block image of serial"),
        "{}: no block image was written:\n{}",
        node.name(),
        text.lines()
            .filter(|l| l.contains("copy:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Once the UEFI node `name` has booted its installed OS (console past `mark`),
/// powers it off and checks its disk.
fn booted_disk(node: &mut vm_harness::qemu::Node, name: &str, mark: u64) -> DiskFacts {
    node.wait_for_console_after(
        mark,
        &format!("rollout-tiny: {name} booted from disk")
            .as_str()
            .into(),
        Duration::from_secs(60),
    )
    .unwrap();
    node.power_off().unwrap();
    e2e_support::check_root_fills_its_partition(&node.disk_path());
    check_disk(&node.disk_path(), name, Firmware::Uefi)
}

#[test]
fn nodes_are_powered_and_reinstalled_by_the_server_over_ipmi_and_qmp() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    // node1's power belongs to ipmi_sim (QEMU's ipmi-bmc-extern device on the
    // BMC's VM port), reached by the server's `ipmi` driver over RMCP+; node2
    // is powered over its QEMU monitor (`qmp`). After the harness first starts
    // node2, only the operator's commands touch either node's power.
    let mut t = E2eLab::build(a, "e2e-power", ImageKind::Tiny, 8 * GIB, |lab| {
        lab.add_node(Firmware::Bios)?;
        lab.add_node(Firmware::Bios)?;
        lab.add_bmc("node1")?;
        Ok(lab.config())
    });
    let out = t.cli(a, &["node", "power", "node1", "status"]);
    assert!(out.contains("node1: power off"), "{out}");
    t.cli(a, &["node", "power", "node1", "on"]);
    t.lab.nodes_mut()[1].start().unwrap();
    let first: Vec<String> = ["node1", "node2"]
        .iter()
        .map(|n| {
            let rec = t.wait_booted(n, INSTALL);
            assert_eq!(rec.installs, 1);
            rec.boot_id.expect("phone-home sends a boot id")
        })
        .collect();

    // Off through the server: the machines stop and say so.
    for n in ["node1", "node2"] {
        let out = t.cli(a, &["node", "power", n, "off"]);
        assert!(out.contains(&format!("{n}: power off done")), "{out}");
        let out = t.cli(a, &["node", "power", n, "status"]);
        assert!(out.contains(&format!("{n}: power off")), "{out}");
    }
    assert!(
        !t.lab.nodes_mut()[0].is_running(),
        "node1's VM still runs after an IPMI power off"
    );
    let mark = t.lab.nodes()[1].console_mark();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        t.lab.nodes()[1].console_mark(),
        mark,
        "node2's console kept printing after power off"
    );

    // On: the server tells iPXE to boot the disk, nothing reinstalls.
    for n in ["node1", "node2"] {
        t.cli(a, &["node", "power", n, "on"]);
    }
    for (n, before) in ["node1", "node2"].iter().zip(&first) {
        let rec = t.wait_record(n, "a boot from disk", INSTALL, |r| {
            r.is_done() && r.boot_id.as_deref().is_some_and(|b| b != before)
        });
        assert_eq!(rec.installs, 1, "{n}: powering on reinstalled it");
    }
    assert!(
        t.server_log().contains("boot.ipxe → boot from local disk"),
        "the server did not send the installed nodes to their disks"
    );

    // A plain reinstall waits for the next power-on; `--now` is that power-on.
    let out = t.cli(a, &["node", "reinstall", "node1", "node2", "--now"]);
    for n in ["node1", "node2"] {
        assert!(out.contains(&format!("{n}: marked for reinstall")), "{out}");
    }
    for n in ["node1", "node2"] {
        let rec = t.wait_record(n, "the reinstall and its phone-home", INSTALL, |r| {
            r.installs == 2 && r.is_done()
        });
        assert_eq!(rec.installs, 2);
        let shown = t.cli(a, &["node", "show", n]);
        let history = shown.split("\nhistory:").nth(1).unwrap_or_default();
        for step in ["\"off\"", "\"on\"", "reinstall"] {
            assert!(
                history.contains(step),
                "no {step} in {n}'s history:\n{history}"
            );
        }
    }
    let calls = t.lab.nodes()[0]
        .bmc()
        .expect("node1 has a BMC")
        .chassis_calls();
    let boot = calls.iter().position(|c| c == "set boot pxe");
    let cycle = calls.iter().rposition(|c| c == "set power 0");
    assert!(
        boot.is_some() && cycle.is_some() && boot < cycle,
        "node1's BMC did not get a one-time PXE boot before the power cycle: {calls:?}"
    );
}

#[test]
fn three_mixed_nodes_install_at_once_with_distinct_identities() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let fws = [Firmware::Bios, Firmware::Uefi, Firmware::Bios];
    let mut t = E2eLab::new(a, "e2e-three", &fws, ImageKind::Tiny, 8 * GIB);
    t.lab.start_all().unwrap();
    let mut ips = Vec::new();
    for i in 1..=3 {
        let rec = t.wait_booted(&format!("node{i}"), INSTALL);
        assert_eq!(rec.hostname, format!("node{i}"));
        ips.push(rec.ip.clone());
    }
    let mut facts = Vec::new();
    for (i, node) in t.lab.nodes_mut().iter_mut().enumerate() {
        let name = format!("node{}", i + 1);
        let want = format!("rollout-tiny: {name} booted from disk, serial");
        node.wait_for_console(&want.as_str().into(), Duration::from_secs(60))
            .unwrap();
        // The address the installed OS got, as it printed it.
        let line = node
            .console_tail(400)
            .into_iter()
            .rev()
            .find(|l| l.contains(&want))
            .unwrap();
        let want_ip = format!("10.44.0.{}/24", 11 + i);
        assert!(line.contains(&want_ip), "{name}: {line}");
        node.power_off().unwrap();
        facts.push(check_disk(&node.disk_path(), &name, fws[i]));
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "addresses not distinct: {ips:?}");
    assert_distinct_keys(&facts.iter().collect::<Vec<_>>());
}

#[test]
fn too_small_disk_reports_a_failed_install_with_the_sizes() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut t = E2eLab::new(a, "e2e-small", &[Firmware::Bios], ImageKind::Tiny, 2 * GIB);
    t.lab.start_all().unwrap();
    let rec = t.wait_record("node1", "a failed install", INSTALL, |r| r.is_failed());
    assert_eq!(rec.stage.as_deref(), Some("choose_disk"), "{}", rec.line());
    let err = rec.last_error.clone().unwrap_or_default();
    // The disk's size and what the layout (1 GiB root + 2 GiB swap + boot) needs.
    assert!(err.contains("2048 MiB"), "{err}");
    assert!(err.contains("307") && err.contains("needs"), "{err}");
}

#[test]
fn debian_image_installs_and_phones_home_from_systemd() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let image = match a.debian_image() {
        Ok(p) => p,
        Err(e) => panic!("building the Debian image: {e}"),
    };
    let mut t = E2eLab::new_with(
        a,
        "e2e-debian",
        &[Firmware::Bios],
        ImageKind::Debian,
        8 * GIB,
        |cfg| {
            // Long enough that the operator's own `rollout sync --all` below
            // runs well before the node's timer first fires (boot + 180 s).
            cfg.install.sync_interval = PULL_INTERVAL;
            // A site's own node-local directory, and apt's downloads kept on a
            // tmpfs while the image is changed, as a cluster would configure it.
            let image = ImageConfig {
                name: cfg.install.image.clone(),
                excludes: vec![SITE_LOCAL_DIR.into()],
                mounts: vec![ImageMount {
                    source: "tmpfs".into(),
                    target: "/var/cache/apt/archives".into(),
                    fstype: "tmpfs".into(),
                    options: String::new(),
                }],
            };
            cfg.images.push(image);
        },
    );
    t.lab.start_all().unwrap();
    let rec = t.wait_booted("node1", Duration::from_secs(1200));
    assert_eq!(rec.installs, 1);
    let installed_serial = rec.serial.expect("installed serial");
    maintain_in_place(&mut t, a, installed_serial);
    node_pulls_a_new_serial_by_itself(&mut t, a, installed_serial + 1);
    rolls_back_to(&mut t, a, installed_serial + 2, installed_serial);
    let node = &mut t.lab.nodes_mut()[0];
    node.power_off().unwrap();
    let facts = check_disk(&node.disk_path(), "node1", Firmware::Bios);
    for k in [
        "ssh_host_ed25519_key",
        "ssh_host_rsa_key",
        "ssh_host_ecdsa_key",
    ] {
        assert!(
            facts.host_keys.contains_key(k),
            "{k} missing: {:?}",
            facts.host_keys.keys()
        );
    }
    // The image's own keys, if it has any, must not be on the node.
    let published = std::fs::canonicalize(image.join("published")).unwrap();
    let image_ssh = published.join("root/etc/ssh");
    for (name, key) in &facts.host_keys {
        let img = std::fs::read_to_string(image_ssh.join(name)).ok();
        assert_ne!(img.as_ref(), Some(key), "{name} is the image's key");
    }
}

/// The maintenance phase on a running node: publish serial N+1 (a changed file
/// and a new package, made inside `image enter`), `rollout sync --all` brings the
/// node to N+1 moving only the changes, node-local files stay, and `rollout exec`
/// sees the new serial.
fn maintain_in_place(t: &mut E2eLab, a: &vm_harness::e2e::Artifacts, from: u64) {
    // Made on the node after its install; the image never has it, so only the
    // image's configured exclude keeps `sync --delete` from removing it.
    let made = t.cli(
        a,
        &[
            "exec",
            "--all",
            "--",
            &format!("mkdir -p {SITE_LOCAL_DIR} && echo mine > {SITE_LOCAL_DIR}state"),
        ],
    );
    assert!(made.contains("1 ok"), "{made}");
    // The package the new serial adds must be new to the node: the image tests
    // (tests/images.rs) put `less` into the same cached image, so this one is
    // a package nothing else in the project installs.
    let before = t.cli(
        a,
        &[
            "exec",
            "--all",
            "--",
            &format!("command -v {NEW_PACKAGE} || echo {NEW_PACKAGE}=none"),
        ],
    );
    assert!(before.contains(&format!("{NEW_PACKAGE}=none")), "{before}");
    enter_image(
        t,
        a,
        &format!("grep -q ' /var/cache/apt/archives tmpfs ' /proc/self/mounts && echo rollout-e2e-v2 > /etc/rollout-release && apt-get update -q && apt-get install -y -q --no-install-recommends {NEW_PACKAGE}"),
    );
    // No wait for the rsync daemon: the server adds the new serial's module
    // before it tells a node about the serial.
    let to = from + 1;
    let image_bytes: u64 = std::fs::read_to_string(
        t.lab
            .state_dir()
            .join(format!("images/default/serials/{to}/meta.json")),
    )
    .ok()
    .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
    .and_then(|m| m["size_bytes"].as_u64())
    .expect("meta.json of the new serial has size_bytes");

    let synced = t.cli(a, &["sync", "--all"]);
    eprintln!("{synced}");
    assert!(
        synced.contains(&format!("updated {from} → {to}")),
        "{synced}"
    );
    let moved: u64 = synced
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .find(|w| w[1] == "bytes" && w[2].starts_with("transferred"))
        .and_then(|w| {
            w[0].trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .expect("sync reports the bytes it transferred");
    assert!(
        moved < image_bytes / 20,
        "sync moved {moved} bytes of a {image_bytes}-byte image"
    );

    let again = t.cli(a, &["sync", "--all"]);
    assert!(
        again.contains(&format!("serial {to} (up to date)")),
        "{again}"
    );
    let serials = t.cli(a, &["exec", "--all", "--", "cat", "/etc/rollout/serial"]);
    assert!(
        serials.contains(&format!("exit=0  {to}")) && serials.contains("1 ok"),
        "{serials}"
    );
    let state = t.cli(
        a,
        &[
            "exec",
            "--all",
            "--",
            // One line: exec shows the first three lines of each node's output.
            &format!("{{ cat /etc/hostname /etc/rollout-release {SITE_LOCAL_DIR}state; command -v {NEW_PACKAGE}; }} | tr '\\n' ' '"),
        ],
    );
    assert!(
        state.contains("node1")
            && state.contains("rollout-e2e-v2")
            && state.contains("mine")
            && state.contains(&format!("/usr/bin/{NEW_PACKAGE}")),
        "{state}"
    );
}

/// `rollout image enter default -- sh -c SCRIPT`, run outside the lab namespace:
/// apt inside the image needs the Debian mirror.
fn enter_image(t: &E2eLab, a: &vm_harness::e2e::Artifacts, script: &str) {
    t.host_cli(a, &["image", "enter", "default", "--", "sh", "-c", script]);
}

/// The pull side of updates: with `[install] sync_interval`, the node's own
/// timer brings it to a newly published serial, with nobody running `rollout sync`.
fn node_pulls_a_new_serial_by_itself(t: &mut E2eLab, a: &vm_harness::e2e::Artifacts, from: u64) {
    enter_image(t, a, "echo rollout-e2e-v3 > /etc/rollout-release");
    let to = from + 1;
    let wait = Duration::from_secs(2 * PULL_INTERVAL + 60);
    t.wait_record(
        "node1",
        &format!("its timer to pull serial {to}"),
        wait,
        |r| r.serial == Some(to),
    );
    let journal = t.cli(
        a,
        &[
            "exec",
            "--all",
            "--",
            // The timer's run is in the node's journal, which the earlier sync
            // (--delete onto the live root) must have left in place.
            "journalctl -u rollout-sync.service -o cat --no-pager | grep updated | tail -n 1; cat /etc/rollout-release",
        ],
    );
    assert!(
        journal.contains(&format!("updated {from} → {to}")) && journal.contains("rollout-e2e-v3"),
        "{journal}"
    );
}

/// `rollout image rollback` republishes an old serial and `rollout sync` takes
/// the node back to it: the serial recorded on the node and on the server is
/// the old one, and what the later serials added (a file, [`NEW_PACKAGE`])
/// is gone again.
fn rolls_back_to(t: &mut E2eLab, a: &vm_harness::e2e::Artifacts, from: u64, to: u64) {
    t.host_cli(a, &["image", "rollback", "default", &to.to_string()]);
    let synced = t.cli(a, &["sync", "--all"]);
    assert!(
        synced.contains(&format!("updated {from} → {to}")),
        "{synced}"
    );
    let rec = t.wait_record("node1", &format!("serial {to} reported"), INSTALL, |r| {
        r.serial == Some(to)
    });
    assert_eq!(rec.installs, 1, "a rollback must not reinstall");
    let state = t.cli(
        a,
        &[
            "exec",
            "--all",
            "--",
            &format!("echo serial=$(cat /etc/rollout/serial) release=$(cat /etc/rollout-release 2>/dev/null || echo none) pkg=$(command -v {NEW_PACKAGE} || echo none) host=$(cat /etc/hostname)"),
        ],
    );
    assert!(
        state.contains(&format!("serial={to} "))
            && state.contains("release=none")
            && state.contains("pkg=none")
            && state.contains("host=node1"),
        "{state}"
    );
}

/// A machine nobody declared PXE-boots: the dashboard's live stream (the
/// `/api/v1/events` that the page follows) shows it discovered, installing
/// through its stages and installed, and the page and `rollout watch` list it.
#[test]
fn unknown_machine_shows_on_the_dashboard_from_discovered_to_installed() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut lab = Lab::create_with(LabOptions {
        name: "e2e-dash".into(),
        ..LabOptions::default()
    })
    .unwrap();
    lab.add_node(Firmware::Bios).unwrap();
    let mut config = lab.config();
    config.nodes.clear();
    // Strangers wait for approval by default; this lab installs them unasked
    // (its node's disk is blank, so the installer takes it).
    config.install.unknown = Some(vm_harness::config::UnknownPolicy::Install);
    let server = a.serve_with(&mut lab, ImageKind::Tiny, config).unwrap();
    // What a browser on the dashboard receives, recorded from the start (reads
    // need a credential: the admin token, as the CLI uses it).
    let token = vm_harness::server::admin_token(&lab.state_dir()).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let stream = tempfile::NamedTempFile::new().unwrap();
    let mut curl = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.netns().name(),
            "curl",
            "-sN",
            "-H",
            &auth,
        ])
        .arg(format!("http://{server}/api/v1/events"))
        .stdout(stream.reopen().unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mac = lab.nodes()[0].mac().to_string();
    let mut t = E2eLab {
        lab,
        server,
        started: std::time::Instant::now(),
    };
    t.lab.start_all().unwrap();
    let rec = t.wait_booted(&mac, INSTALL);
    let _ = curl.kill();
    let _ = curl.wait();
    assert_eq!(rec.hostname, format!("node-{}", &mac.replace(':', "")[6..]));

    let events = std::fs::read_to_string(stream.path()).unwrap();
    let mut states: Vec<(String, String)> = vec![];
    for data in events.lines().filter_map(|l| l.strip_prefix("data:")) {
        let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
        let entry = (
            v["state"].as_str().unwrap_or("").to_string(),
            v["stage"].as_str().unwrap_or("").to_string(),
        );
        if states.last() != Some(&entry) {
            states.push(entry);
        }
    }
    let order: Vec<&str> = states.iter().map(|(s, _)| s.as_str()).collect();
    let pos = |st: &str| {
        order
            .iter()
            .position(|s| *s == st)
            .unwrap_or_else(|| panic!("{st} never streamed: {states:?}"))
    };
    assert!(
        pos("discovered") < pos("installing") && pos("installing") < pos("installed"),
        "{states:?}"
    );
    for stage in ["partition", "copy", "bootloader"] {
        assert!(
            states
                .iter()
                .any(|(s, st)| s == "installing" && st == stage),
            "stage {stage} never streamed: {states:?}"
        );
    }

    let page = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            t.lab.netns().name(),
            "curl",
            "-sf",
            "-H",
            &auth,
        ])
        .arg(format!("http://{server}/"))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    let row = page
        .split("<tr")
        .find(|r| r.contains(&format!("data-mac=\"{mac}\"")))
        .expect("the node has a row on the dashboard");
    assert!(
        row.contains("state-installed") && row.contains(&rec.hostname),
        "{row}"
    );
    let watch = t.cli(a, &["watch", "--once"]);
    assert!(
        watch
            .lines()
            .any(|l| l.starts_with(&rec.hostname) && l.contains("installed") && l.contains("100%")),
        "{watch}"
    );
}
