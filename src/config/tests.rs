use super::*;

/// A full-mode config on `rbr0` (10.44.0.1/24); `valid.rs` tests build on it too.
pub(super) const BASE: &str = r#"
state_dir = "/tmp/rollout"
[server]
interface = "rbr0"
address = "10.44.0.1"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.199"]
"#;

fn err(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn full_mode_config_loads_with_defaults() {
    let c = Config::parse(BASE).unwrap();
    assert_eq!(c.server.http_port, 80);
    assert_eq!(c.dhcp.lease_time, 3600);
    assert_eq!(c.http_base_url(), "http://10.44.0.1");
}

#[test]
fn dhcp_is_off_without_explicit_mode() {
    let c = Config::parse("state_dir = \"/x\"\n").unwrap();
    assert_eq!(c.dhcp.mode, DhcpMode::Off);
    assert!(c.dhcp_plan(None).unwrap().is_none());
}

#[test]
fn dhcp_without_interface_is_refused_naming_the_key() {
    let e = err("state_dir = \"/x\"\n[server]\naddress = \"10.0.0.1\"\n[dhcp]\nmode = \"proxy\"\n");
    assert!(e.contains("server.interface"), "{e}");
    assert!(e.contains("never guesses"), "{e}");
}

#[test]
fn full_mode_without_range_is_refused() {
    let e = err("state_dir = \"/x\"\n[server]\ninterface = \"e\"\naddress = \"10.0.0.1\"\n[dhcp]\nmode = \"full\"\n");
    assert!(e.contains("dhcp.range"), "{e}");
}

#[test]
fn range_outside_interface_subnet_is_refused() {
    let c = Config::parse(BASE).unwrap();
    let e = c
        .dhcp_plan(Some((
            "10.45.0.1".parse().unwrap(),
            "255.255.255.0".parse().unwrap(),
        )))
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside rbr0's subnet 10.45.0.0/24"), "{e}");
    let ok = c
        .dhcp_plan(Some((
            "10.44.0.1".parse().unwrap(),
            "255.255.255.0".parse().unwrap(),
        )))
        .unwrap()
        .unwrap();
    assert_eq!(
        ok.range.unwrap().0,
        "10.44.0.100".parse::<Ipv4Addr>().unwrap()
    );
}

#[test]
fn unknown_keys_and_bad_macs_and_duplicates_are_refused() {
    assert!(err(&format!("{BASE}bogus = 1\n")).contains("unknown"));
    let bad_mac = format!("{BASE}[[node]]\nmac = \"52:54:00\"\nhostname = \"a\"\n");
    assert!(err(&bad_mac).contains("node[0].mac"));
    let dup = format!(
        "{BASE}[[node]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\n[[node]]\nmac = \"52-54-00-00-00-01\"\nhostname = \"b\"\n"
    );
    assert!(err(&dup).contains("declared twice"));
    let dup_name = format!(
        "{BASE}[[node]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\n[[node]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"a\"\n"
    );
    assert!(err(&dup_name).contains("node[1].hostname"));
}

#[test]
fn reversed_range_and_bad_netmask_are_refused() {
    let rev = BASE.replace(
        "[\"10.44.0.100\", \"10.44.0.199\"]",
        "[\"10.44.0.199\", \"10.44.0.100\"]",
    );
    assert!(err(&rev).contains("swap"));
    let mask = format!("{BASE}netmask = \"255.0.255.0\"\n");
    assert!(err(&mask).contains("dhcp.netmask"));
}

#[test]
fn normalizes_macs() {
    assert_eq!(
        normalize_mac("52-54-00-AB-cd-01").unwrap(),
        "52:54:00:ab:cd:01"
    );
    assert!(normalize_mac("52:54:00:ab:cd").is_none());
    assert!(normalize_mac("zz:54:00:ab:cd:01").is_none());
}

#[test]
fn image_tables_add_excludes_and_mounts() {
    let c = Config::parse(&format!(
        r#"{BASE}
[[image]]
name = "compute"
excludes = ["/var/lib/slurm/", "/etc/munge/munge.key"]

[[image.mount]]
source = "nfs1:/export/usr"
target = "/usr"
type = "nfs"
options = "ro,nolock"

[[image.mount]]
source = "/srv/site-tools"
target = "/opt/site"
"#
    ))
    .unwrap();
    let image = c.image("compute").unwrap();
    assert_eq!(image.mounts.len(), 2);
    assert_eq!(image.mounts[1].fstype, "bind", "bind is the default type");
    let ex = c.excludes_for("compute");
    assert!(ex.contains(&"/etc/hostname".to_string()), "defaults stay");
    assert_eq!(ex.last().unwrap(), "/etc/munge/munge.key");
    assert_eq!(
        c.excludes_for("other").len(),
        crate::wire::DEFAULT_EXCLUDES.len()
    );
}

#[test]
fn bad_image_tables_are_refused_naming_the_key() {
    let e = err(&format!(
        "{BASE}[[image]]\nname = \"a\"\nexcludes = [\"etc/x\"]\n"
    ));
    assert!(
        e.contains("image[0].excludes[0]") && e.contains("not absolute"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}[[image]]\nname = \"a\"\n[[image]]\nname = \"a\"\n"
    ));
    assert!(e.contains("image[1].name") && e.contains("twice"), "{e}");
    let e = err(&format!(
        "{BASE}[[image]]\nname = \"a\"\n[[image.mount]]\nsource = \"/x\"\ntarget = \"/proc/x\"\n"
    ));
    assert!(e.contains("image[0].mount[0].target"), "{e}");
    let e = err(&format!("{BASE}[[image]]\nname = \"web-2\"\n"));
    assert!(e.contains("image[0].name"), "{e}");
}

#[test]
fn sync_interval_is_off_by_default_and_not_too_short() {
    assert_eq!(Config::parse(BASE).unwrap().install.sync_interval, 0);
    let e = err(&format!("{BASE}[install]\nsync_interval = 10\n"));
    assert!(e.contains("install.sync_interval"), "{e}");
    let c = Config::parse(&format!("{BASE}[install]\nsync_interval = 900\n")).unwrap();
    assert_eq!(c.install.sync_interval, 900);
}

/// config is a leaf: every other module may import it, so it imports none of them
/// but the dependency-free shared layer (`wire`, `mac`, `layout`: the layout
/// arithmetic imports only `wire`), or a cycle comes back.
#[test]
fn config_imports_no_other_module_but_wire() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // Spelled in two halves so this test does not find itself.
        let needle = ["crate", "::"].concat();
        for (at, _) in text.match_indices(&needle) {
            let used = &text[at + needle.len()..];
            let module = used
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap();
            assert!(
                matches!(module, "wire" | "mac" | "layout" | "config"),
                "{} imports module {module}",
                path.display()
            );
        }
    }
}

#[test]
fn unknown_machines_wait_for_approval_unless_the_file_says_otherwise() {
    let c = Config::parse(BASE).unwrap();
    assert_eq!(c.install.unknown, None);
    assert_eq!(c.install.unknown_policy(), UnknownPolicy::Approve);
    let c = Config::parse(&format!("{BASE}[install]\nunknown = \"install\"\n")).unwrap();
    assert_eq!(c.install.unknown_policy(), UnknownPolicy::Install);
    // A written policy survives a write/read round trip (the lab writes its file).
    let back = Config::parse(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back.install.unknown, Some(UnknownPolicy::Install));
}

const PROXY: &str = "state_dir = \"/x\"\n[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"proxy\"\n";

#[test]
fn proxy_mode_installs_strangers_only_when_the_file_says_so() {
    // Defaulted: strangers wait for approval.
    let c = Config::parse(PROXY).unwrap();
    assert_eq!(c.install.unknown_policy(), UnknownPolicy::Approve);
    // Written: the operator decided, it is accepted.
    let c = Config::parse(&format!("{PROXY}[install]\nunknown = \"install\"\n")).unwrap();
    assert_eq!(c.install.unknown_policy(), UnknownPolicy::Install);
    // Were "install" ever the default again, proxy mode would refuse it unwritten,
    // saying why; full mode and a written policy pass.
    let e = check_unknown_policy(DhcpMode::Proxy, None, UnknownPolicy::Install)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("install.unknown") && e.contains("shared LAN") && e.contains("repartitions"),
        "{e}"
    );
    assert!(e.contains("rollout discovered approve"), "{e}");
    for (mode, written) in [
        (DhcpMode::Full, None),
        (DhcpMode::Off, None),
        (DhcpMode::Proxy, Some(UnknownPolicy::Install)),
    ] {
        assert!(
            check_unknown_policy(mode, written, UnknownPolicy::Install).is_ok(),
            "{mode:?} {written:?}"
        );
    }
}

#[test]
fn new_clients_are_limited_by_default_and_a_zero_burst_is_refused() {
    let c = Config::parse(BASE).unwrap();
    assert_eq!(
        (c.dhcp.new_clients_per_minute, c.dhcp.new_clients_burst),
        (60, 64)
    );
    let c = Config::parse(&format!(
        "{BASE}new_clients_per_minute = 6\nnew_clients_burst = 2\n"
    ))
    .unwrap();
    assert_eq!(
        (c.dhcp.new_clients_per_minute, c.dhcp.new_clients_burst),
        (6, 2)
    );
    let e = err(&format!("{BASE}new_clients_burst = 0\n"));
    assert!(e.contains("dhcp.new_clients_burst"), "{e}");
}

#[test]
fn short_or_empty_admin_token_is_refused_with_the_minimum_and_a_way_to_make_one() {
    for token in ["", "secret", "0123456789abcdef0123456789abcde"] {
        let e = err(&format!(
            "state_dir = \"/x\"\n[server]\nadmin_token = \"{token}\"\n"
        ));
        assert!(e.contains("server.admin_token"), "{e}");
        assert!(e.contains("minimum of 32"), "{e}");
        assert!(e.contains("openssl rand -hex 24"), "{e}");
    }
    let ok = "0123456789abcdef0123456789abcdef";
    let c = Config::parse(&format!(
        "state_dir = \"/x\"\n[server]\nadmin_token = \"{ok}\"\n"
    ))
    .unwrap();
    assert!(
        !c.server.anonymous_read,
        "reads need a credential by default"
    );
    assert_eq!(c.server.session_lifetime, 8 * 3600);
    let e = err("state_dir = \"/x\"\n[server]\nsession_lifetime = 0\n");
    assert!(e.contains("server.session_lifetime"), "{e}");
}

#[test]
fn max_copies_is_optional_and_never_zero() {
    let c = Config::parse(BASE).unwrap();
    assert_eq!(c.install.max_copies, None);
    let c = Config::parse(&format!("{BASE}[install]\nmax_copies = 2\n")).unwrap();
    assert_eq!(c.install.max_copies, Some(2));
    let e = err(&format!("{BASE}[install]\nmax_copies = 0\n"));
    assert!(e.contains("install.max_copies"), "{e}");
}
