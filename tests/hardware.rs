//! The hardware inventory and a node's bond/VLAN against a real `rollout serve`
//! on loopback: the installer's plan request (made with curl, as the installer
//! makes it: a POST with its boot secret and the report) stores the report;
//! the API, the node's dashboard page, `rollout node show` and
//! `rollout node list --where` show and filter it; a stranger's report is
//! refused with its request. A node with `vlan`/`bond` gets them on its
//! installer's command line and in its plan.

mod common;
use common::loopback::Server;
use rollout::wire::hardware::{Cpu, Disk, Nic, System};
use rollout::wire::Hardware;
use serde_json::{json, Value};
use std::process::Command;

const MAC: &str = "52:54:00:00:00:01";
const MAC2: &str = "52:54:00:00:00:02";

/// node1 from the loopback config, and node2 with a bond and a VLAN.
fn server(dir: &std::path::Path) -> Server {
    let cfg = common::loopback::write_config(dir, 0);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[[node]]\nmac = \"{MAC2}\"\nhostname = \"node2\"\nvlan = 100\nbond = {{ mode = \"802.3ad\", interfaces = [\"{MAC2}\", \"52:54:00:00:00:03\"] }}\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    Server::start(dir)
}

fn report(memory_mib: u64, disk_gib: u64, vendor: &str) -> Hardware {
    Hardware {
        cpu: Cpu {
            model: "QEMU Virtual CPU version 2.5+".into(),
            count: 2,
        },
        memory_mib,
        disks: vec![Disk {
            name: "sda".into(),
            model: "QEMU HARDDISK".into(),
            serial: "QM00001".into(),
            size_bytes: disk_gib << 30,
            rotational: true,
        }],
        nics: vec![Nic {
            name: "eth0".into(),
            mac: MAC.into(),
            driver: "e1000e".into(),
            speed_mbps: Some(1000),
            link: true,
        }],
        firmware: "bios".into(),
        system: System {
            vendor: vendor.into(),
            product: "Standard PC (Q35 + ICH9, 2009)".into(),
            serial: "SN-0042".into(),
        },
    }
}

/// `curl -X POST` of a plan request body: (status, body).
fn post_plan(s: &Server, mac: &str, body: &Value) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .args(["--data", &body.to_string()])
        .arg(s.url(&format!("/api/v1/plan/{mac}")))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn names(list: &str) -> Vec<String> {
    list.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn the_installers_report_is_stored_shown_and_filtered_on() {
    if !testkit::prereq::require_known_tools(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());

    // A stranger without the boot secret: refused, and its report is not kept.
    let forged = json!({"boot_secret": "0000", "hardware": report(1, 1, "Forged")});
    let (st, body) = post_plan(&s, MAC, &forged);
    assert_eq!(st, 403, "{body}");
    let (_, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert!(n.get("hardware").is_none(), "a refused request stored: {n}");

    // The node's installer: its script's secret and its report.
    let secret = s.boot_secret(MAC);
    let mine = report(8192, 120, "QEMU");
    let (st, body) = post_plan(&s, MAC, &json!({"boot_secret": secret, "hardware": mine}));
    assert_eq!(st, 200, "{body}");
    // node2's installer reports a small machine.
    let secret2 = s.boot_secret(MAC2);
    let (st, body) = post_plan(
        &s,
        MAC2,
        &json!({"boot_secret": secret2, "hardware": report(2048, 20, "Dell Inc.")}),
    );
    assert_eq!(st, 200, "{body}");

    // The API's node JSON.
    let (st, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!(st, 200);
    let hw: Hardware = serde_json::from_value(n["hardware"].clone()).unwrap();
    assert_eq!(hw, mine);
    assert!(n["hardware_at"].as_u64().is_some(), "{n}");
    assert!(s.history_kinds("node1").contains(&"hardware".to_string()));

    // The node's dashboard page.
    let page = s.admin_text("/nodes/node1");
    for needle in [
        "<h2>Hardware</h2>",
        "2 × QEMU Virtual CPU version 2.5+",
        "8192 MiB (8 GiB)",
        "Disk sda",
        "120 GiB, QEMU HARDDISK, rotational (serial QM00001)",
        "52:54:00:00:00:01, driver e1000e, link up, 1000 Mbit/s",
        "QEMU Standard PC (Q35 + ICH9, 2009) (serial SN-0042)",
    ] {
        assert!(page.contains(needle), "{needle:?} not on the page:\n{page}");
    }

    // `rollout node show`.
    let (ok, out, err) = s.cli(&["node", "show", "node1"]);
    assert!(ok, "{err}");
    assert!(out.contains("hardware (reported "), "{out}");
    assert!(out.contains("Memory       8192 MiB (8 GiB)"), "{out}");
    assert!(out.contains("Disk sda     120 GiB"), "{out}");

    // `rollout node list --where`.
    for (expr, want) in [
        ("memory_mib>=4096", vec!["node1"]),
        ("disk_gib>=100", vec!["node1"]),
        ("vendor=QEMU", vec!["node1"]),
        ("vendor~dell", vec!["node2"]),
        ("memory_mib<4096,nic_driver=e1000e", vec!["node2"]),
        ("cpus=2", vec!["node1", "node2"]),
        ("memory_mib>=4096,vendor=Dell Inc.", vec![]),
    ] {
        let (ok, out, err) = s.cli(&["node", "list", "--where", expr]);
        assert!(ok, "{expr}: {err}");
        assert_eq!(names(&out), want, "{expr}:\n{out}");
    }
    let (ok, out, _) = s.cli(&[
        "node",
        "list",
        "--where",
        "memory_mib>=4096",
        "--where",
        "firmware=uefi",
    ]);
    assert!(ok);
    assert!(names(&out).is_empty(), "both conditions must hold:\n{out}");

    // A bad expression: a clear error, a failed exit, no table.
    for (expr, needle) in [
        ("memory>=4096", "unknown key \"memory\""),
        (
            "memory_mib>=4G",
            "memory_mib is a whole number (MiB of memory), and \"4G\" is not one",
        ),
        (
            "vendor>QEMU",
            "vendor is text (system vendor); compare it with =, != or ~",
        ),
    ] {
        let (ok, out, err) = s.cli(&["node", "list", "--where", expr]);
        assert!(!ok, "{expr} was accepted:\n{out}");
        assert!(err.contains(needle), "{expr}: {err}");
        assert!(out.is_empty(), "{out}");
    }
}

#[test]
fn a_nodes_bond_and_vlan_reach_its_installer_and_its_plan() {
    if !testkit::prereq::require_known_tools(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let script = s.text(&format!("/boot.ipxe?mac={MAC2}"));
    assert!(
        script.contains(
            " rollout.bond=802.3ad,52:54:00:00:00:02,52:54:00:00:00:03 rollout.vlan=100 console=ttyS0"
        ),
        "{script}"
    );
    let (st, plan) = s.plan(MAC2);
    assert_eq!(st, 200, "{plan}");
    assert_eq!(
        plan["link"],
        json!({"bond": {"mode": "802.3ad", "interfaces": [MAC2, "52:54:00:00:00:03"]}, "vlan": 100})
    );
    // A node without them: the plain script and an empty link.
    let script = s.text(&format!("/boot.ipxe?mac={MAC}"));
    assert!(
        !script.contains("rollout.vlan") && !script.contains("rollout.bond"),
        "{script}"
    );
    let (st, plan) = s.plan(MAC);
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["link"], json!({}));
}
