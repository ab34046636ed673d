//! The Debian package (`scripts/package.sh`): its conffile documents every config
//! key, and the built .deb passes lintian, installs into a fresh Debian chroot with
//! its dependencies from the mirror, and its unit's ExecStart serves from there,
//! in a network namespace, with no more than the unit's capabilities.

mod common;

use rollout::config::*;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CONFFILE: &str = include_str!("../packaging/debian/rollout.toml");
const UNIT: &str = include_str!("../packaging/debian/rollout.service");

/// A config with every key the schema has set, so its serialization names them
/// all. Struct literals without `..`: a new field does not compile until it is
/// added here, and then this test fails until the conffile documents it.
fn every_key_set() -> Config {
    let ip = Ipv4Addr::new(10, 44, 0, 1);
    Config {
        state_dir: "/var/lib/rollout".into(),
        server: ServerConfig {
            interface: Some("eno2".into()),
            address: Some(ip),
            http_port: 80,
            tftp_port: 69,
            tftp_root: "/usr/lib/ipxe".into(),
            listen: Some(ip),
            rsync_port: 873,
            admin_token: Some("x".repeat(48)),
            anonymous_read: false,
            session_lifetime: 28800,
        },
        dhcp: DhcpConfig {
            mode: DhcpMode::Full,
            range: Some([ip, ip]),
            netmask: Some(ip),
            router: Some(ip),
            dns: vec![ip],
            lease_time: 3600,
            quarantine_time: 600,
            relays: vec![RelaySubnet {
                range: [ip, ip],
                netmask: ip,
                router: Some(ip),
            }],
            new_clients_per_minute: 60,
            new_clients_burst: 64,
            ping_before_offer: false,
        },
        install: InstallConfig {
            image: "default".into(),
            kernel_cmdline: String::new(),
            unknown: Some(UnknownPolicy::Approve),
            on_failure: RetryPolicy::Retry,
            install_timeout: 1,
            reboot_after_failure: 1,
            sync_interval: 0,
            keep_identity: true,
            layout: Some("compute".into()),
            max_copies: Some(16),
            multicast: MulticastConfig {
                enabled: true,
                wait_secs: 10,
                max_receivers: 64,
                rate_mbps: 100,
                port_base: 9000,
            },
            tar_prefill: true,
            block_image: true,
        },
        nodes: vec![NodeConfig {
            mac: "52:54:00:aa:00:01".into(),
            hostname: "n1".into(),
            ip: Some(ip),
            image: Some("default".into()),
            disk: Some("/dev/sda".into()),
            root_mib: Some(1),
            swap_mib: Some(1),
            layout: Some("compute".into()),
            vlan: Some(100),
            bond: Some(BondConfig {
                mode: "active-backup".into(),
                interfaces: vec!["52:54:00:aa:00:01".into()],
            }),
            bmc: Some(BmcConfig {
                driver: BmcDriver::Ipmi,
                address: Some("a".into()),
                port: Some(623),
                username: Some("u".into()),
                password_file: Some("/p".into()),
                system: Some("/s".into()),
                verify_tls: true,
                ca_file: Some("/ca".into()),
                socket: Some("/q".into()),
                broadcast: Some(ip),
                boot_mode: Some(BootMode::Uefi),
            }),
        }],
        images: vec![ImageConfig {
            name: "default".into(),
            excludes: vec!["/x".into()],
            mounts: vec![ImageMount {
                source: "s".into(),
                target: "/t".into(),
                fstype: "bind".into(),
                options: "ro".into(),
            }],
        }],
        mirroring: ImagesConfig {
            mirror_from: Some("rsync://p/".into()),
            mirror_password_file: Some("/p".into()),
            mirror_interval: 30,
            mirror_bwlimit: 0,
            mirror_hosts: vec!["10.45.0.0/24".into()],
        },
        power: PowerConfig {
            poll_interval: 300,
            concurrency: 8,
            timeout: 20,
        },
        layouts: vec![LayoutConfig {
            name: "compute".into(),
            disks: vec!["first".into()],
            partitions: vec![PartitionConfig {
                size: "1GiB".into(),
                mount: Some("/".into()),
                fs: Some("ext3".into()),
                label: Some("root".into()),
                options: Some("noatime".into()),
                swap: Some(false),
                lvm: Some(false),
            }],
            mounts: vec![MountConfig {
                mount: "/usr".into(),
                kind: "nfs".into(),
                source: Some("nfs1:/export/usr".into()),
                options: Some("ro".into()),
            }],
            raid: Some(RaidConfig { level: 1 }),
            lvm: Some(LvmConfig {
                vg: "vg0".into(),
                volumes: vec![VolumeConfig {
                    name: "root".into(),
                    size: "rest".into(),
                    mount: Some("/".into()),
                    fs: Some("ext4".into()),
                    label: Some("root".into()),
                    options: Some("noatime".into()),
                    swap: Some(false),
                }],
            }),
        }],
        store: Some(StoreConfig {
            url: "postgres://rollout@db1/rollout".into(),
            password_file: Some("/etc/rollout/db.password".into()),
        }),
    }
}

/// Dotted key paths of a TOML value; an array of tables contributes its tables'
/// keys under its own name (`node.bmc.driver`).
fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(table) = value.as_table() else {
        return;
    };
    for (key, v) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match v {
            toml::Value::Table(_) => key_paths(v, &path, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
            {
                for item in items {
                    key_paths(item, &path, out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The conffile with its commented settings (`#key = …`, `#[section]`) switched on;
/// explanations (`# …`) stay comments.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_conffile_documents_every_config_key_with_a_valid_example() {
    let mut schema = BTreeSet::new();
    key_paths(
        &toml::Value::try_from(every_key_set()).unwrap(),
        "",
        &mut schema,
    );
    let text = uncommented(CONFFILE);
    // Every example has the schema's type and no key is unknown (deny_unknown_fields).
    let typed: Result<Config, _> = toml::from_str(&text);
    assert!(
        typed.is_ok(),
        "the commented settings do not parse as the config: {typed:?}"
    );
    let mut documented = BTreeSet::new();
    key_paths(&text.parse::<toml::Value>().unwrap(), "", &mut documented);
    let missing: Vec<_> = schema.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "packaging/debian/rollout.toml does not document {missing:?}; add each as `#key = example` under its section"
    );
    assert!(schema.len() > 50, "the schema walk found only {schema:?}");
    // As shipped (everything commented but state_dir) it is a valid config.
    let shipped = Config::parse(CONFFILE).unwrap();
    assert_eq!(shipped.state_dir, Path::new("/var/lib/rollout"));
    assert_eq!(
        shipped.dhcp.mode,
        DhcpMode::Off,
        "DHCP stays off until configured"
    );
}

/// `KEY=value` of the unit's `[Service]` section.
fn unit_value<'a>(key: &str) -> &'a str {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("rollout.service has no {key}="))
}

/// The unit's bounding set as setpriv takes it: `-all,+net_bind_service,…`.
fn setpriv_bounding_set() -> String {
    let caps: Vec<String> = unit_value("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn the_unit_grants_only_what_the_services_need() {
    assert_eq!(
        setpriv_bounding_set(),
        "-all,+net_bind_service,+net_raw,+sys_chroot,+setgid,+dac_read_search"
    );
    assert_eq!(unit_value("Type"), "notify");
    assert_eq!(unit_value("Restart"), "on-failure");
    assert_eq!(unit_value("ProtectSystem"), "strict");
    assert_eq!(unit_value("ReadWritePaths"), "/var/lib/rollout");
    assert_eq!(unit_value("NoNewPrivileges"), "yes");
    assert!(
        !UNIT.contains("\nUser="),
        "runs as root (rsyncd reads images as uid 0)"
    );
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The environment of commands in the chroot, as a service or a root shell has it.
const CHROOT_ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// A fresh minbase chroot, extracted from a tarball of a pristine `debootstrap
/// --variant=minbase` root (made once from the host's mirror, cached in
/// target/package/): debootstrap itself spends minutes in dpkg's fsyncs, the
/// extraction seconds. Removed on drop.
struct Chroot(PathBuf);

impl Chroot {
    fn fresh(dir: PathBuf) -> Chroot {
        let cache = root().join("target/package/debootstrap-bookworm-minbase.tar.zst");
        if !cache.exists() {
            let scratch = dir.with_extension("bootstrap");
            let _ = std::fs::remove_dir_all(&scratch);
            run_ok(
                Command::new("debootstrap")
                    .args(["--variant=minbase", "bookworm"])
                    .arg(&scratch)
                    .arg(rollout::images::build::host_mirror()),
                "debootstrap --variant=minbase bookworm",
            );
            let partial = cache.with_extension("partial");
            run_ok(
                Command::new("tar")
                    .args(["--zstd", "--numeric-owner", "-C"])
                    .arg(&scratch)
                    .arg("-cf")
                    .arg(&partial)
                    .arg("."),
                "tar of the debootstrap root",
            );
            std::fs::remove_dir_all(&scratch).unwrap();
            std::fs::rename(&partial, &cache).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chroot = Chroot(dir);
        run_ok(
            Command::new("tar")
                .args(["--zstd", "--numeric-owner", "-xpf"])
                .arg(&cache)
                .arg("-C")
                .arg(&chroot.0),
            "extracting the cached debootstrap root",
        );
        // apt inside reaches the mirror by name; no package may start a service;
        // dpkg skips its fsyncs (a throw-away root: this saves minutes).
        std::fs::copy("/etc/resolv.conf", chroot.0.join("etc/resolv.conf")).unwrap();
        std::fs::write(
            chroot.0.join("etc/dpkg/dpkg.cfg.d/unsafe-io"),
            "force-unsafe-io\n",
        )
        .unwrap();
        let policy = chroot.0.join("usr/sbin/policy-rc.d");
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755)).unwrap();
        chroot
    }

    /// `args` inside the chroot, with /proc mounted in a private mount namespace
    /// (gone with the command).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--fork", "--", "sh", "-c"])
            .arg(r#"mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#)
            .arg(&self.0)
            .args(args)
            // Nothing of the test's environment (cargo's LD_LIBRARY_PATH, …) inside.
            .env_clear()
            .envs(CHROOT_ENV)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cleanup: cannot remove {}: {e}", self.0.display());
        }
    }
}

fn phase(start: &mut Instant, what: &str) {
    eprintln!(
        "package test: {what} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    *start = Instant::now();
}

#[test]
fn the_debian_package_lints_installs_and_serves() {
    let tools = [
        "dpkg-deb",
        "dpkg-shlibdeps",
        "strip",
        "lintian",
        "debootstrap",
        "unshare",
        "setpriv",
        "ip",
        "curl",
        "busybox",
    ];
    if !common::can_run(&tools) {
        return;
    }
    let total = Instant::now();
    let mut t = Instant::now();

    run_ok(
        &mut Command::new(root().join("scripts/package.sh")),
        "scripts/package.sh",
    );
    let deb = root().join(format!(
        "target/package/rollout_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.exists(), "{} was not built", deb.display());
    phase(&mut t, "scripts/package.sh");

    // --fail-on error: warnings are printed, errors fail (as root lintian warns too).
    let lint = run_ok(
        Command::new("lintian")
            .args(["--fail-on", "error", "--allow-root"])
            .arg(&deb),
        "lintian",
    );
    eprintln!("lintian:\n{lint}");
    assert!(!lint.lines().any(|l| l.starts_with("E: ")), "{lint}");
    phase(&mut t, "lintian");

    let chroot =
        Chroot::fresh(root().join(format!("target/package/chroot-{}", std::process::id())));
    phase(&mut t, "fresh debootstrap chroot");
    std::fs::copy(&deb, chroot.path("/tmp/rollout.deb")).unwrap();
    run_ok(
        &mut chroot.command(&["apt-get", "update", "-qq"]),
        "apt-get update in the chroot",
    );
    // Its Depends come from the mirror; systemd and man-db for systemd-analyze
    // (which also opens the unit's Documentation= man pages).
    run_ok(
        &mut chroot.command(&[
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "/tmp/rollout.deb",
            "systemd",
            "man-db",
        ]),
        "apt-get install ./rollout.deb in the chroot",
    );
    phase(&mut t, "apt-get install with dependencies");

    use std::os::unix::fs::PermissionsExt;
    let state = std::fs::metadata(chroot.path("/var/lib/rollout")).unwrap();
    assert_eq!(
        state.permissions().mode() & 0o7777,
        0o700,
        "postinst makes /var/lib/rollout 0700"
    );
    for f in [
        "/usr/bin/rollout",
        "/usr/lib/rollout/rollout-installer",
        "/usr/lib/rollout/boot/initramfs.img",
        "/usr/lib/rollout/boot/vmlinuz",
        "/usr/share/man/man1/rollout.1.gz",
        "/usr/share/man/man1/rollout-serve.1.gz",
        "/usr/share/bash-completion/completions/rollout",
        "/usr/share/zsh/vendor-completions/_rollout",
        "/usr/lib/ipxe/undionly.kpxe",
        "/usr/lib/syslinux/mbr/gptmbr.bin",
    ] {
        assert!(chroot.path(f).exists(), "{f} is not installed");
    }
    let conffiles =
        std::fs::read_to_string(chroot.path("/var/lib/dpkg/info/rollout.conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/rollout/rollout.toml");

    let checked = run_ok(
        &mut chroot.command(&["rollout", "check-config"]),
        "rollout check-config",
    );
    assert!(
        checked.contains("/etc/rollout/rollout.toml is valid"),
        "{checked}"
    );
    let verified = run_ok(
        &mut chroot.command(&[
            "systemd-analyze",
            "verify",
            "/lib/systemd/system/rollout.service",
        ]),
        "systemd-analyze verify rollout.service",
    );
    assert!(
        !verified.contains("rollout.service:"),
        "systemd-analyze complains:\n{verified}"
    );
    phase(&mut t, "check-config and systemd-analyze verify");

    serve_in_a_namespace(&chroot);
    phase(&mut t, "ExecStart in a namespace");
    eprintln!("package test: total {:.1} s", total.elapsed().as_secs_f64());
}

/// The unit's ExecStart, in the chroot and a namespace of its own, with the unit's
/// capability bounding set and no_new_privs (setpriv), and the packaged config
/// plus the provisioning interface: every service answers.
fn serve_in_a_namespace(chroot: &Chroot) {
    use std::os::unix::fs::PermissionsExt;
    let ns = testkit::netns::Netns::create(&format!("rt-pkg{}", std::process::id() % 100000))
        .unwrap_or_else(|e| panic!("{e}"));
    let ip = |args: &[&str]| ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
    ip(&[
        "link", "add", "prov0", "type", "veth", "peer", "name", "node0",
    ]);
    ip(&["addr", "add", "10.44.0.1/24", "dev", "prov0"]);
    ip(&["link", "set", "prov0", "up"]);
    ip(&["link", "set", "node0", "up"]);

    let config = chroot.path("/etc/rollout/rollout.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[server]\ninterface = \"prov0\"\naddress = \"10.44.0.1\"\n\n[dhcp]\nmode = \"full\"\n\
         range = [\"10.44.0.100\", \"10.44.0.150\"]\nping_before_offer = true\n",
    );
    std::fs::write(&config, text).unwrap();

    let notify_path = chroot.path("/run/rollout-test-notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    let exec_start: Vec<&str> = unit_value("ExecStart").split_whitespace().collect();
    let log = chroot.path("/tmp/serve.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = ns
        .command("sh")
        .arg("-c")
        .arg(r#"mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#)
        .arg(&chroot.0)
        .args([
            "setpriv",
            "--bounding-set",
            &setpriv_bounding_set(),
            "--no-new-privs",
            "--",
        ])
        .args(&exec_start)
        .env_clear()
        .envs(CHROOT_ENV)
        .env("NOTIFY_SOCKET", "/run/rollout-test-notify")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no READY=1 from rollout serve ({e}); its log:\n{}",
            log_text()
        )
    });
    assert_eq!(&buf[..n], b"READY=1", "{}", log_text());

    let in_ns = |args: &[&str]| {
        let mut cmd = ns.command(args[0]);
        cmd.args(&args[1..]);
        run_ok(&mut cmd, &args.join(" "))
    };
    assert_eq!(
        in_ns(&["curl", "-sSf", "http://10.44.0.1/healthz"]).trim(),
        "ok",
        "{}",
        log_text()
    );
    // The packaged boot files are served as they are (state_dir/boot is empty),
    // and the first stages are Debian's ipxe package.
    for (url, file) in [
        ("/boot/initramfs.img", "/usr/lib/rollout/boot/initramfs.img"),
        ("/boot/vmlinuz", "/usr/lib/rollout/boot/vmlinuz"),
        ("/ipxe/undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
    ] {
        let fetched = chroot.path("/tmp/fetched");
        let mut cmd = ns.command("curl");
        cmd.args(["-sSf", "-o"])
            .arg(&fetched)
            .arg(format!("http://10.44.0.1{url}"));
        run_ok(&mut cmd, url);
        assert!(
            std::fs::read(&fetched).unwrap() == std::fs::read(chroot.path(file)).unwrap(),
            "{url} is not {file}"
        );
        std::fs::remove_file(&fetched).unwrap();
    }
    // DHCP with the probe's raw ICMP socket (CAP_NET_RAW) from a real client.
    let lease = in_ns(&[
        "busybox",
        "udhcpc",
        "-i",
        "node0",
        "-n",
        "-q",
        "-f",
        "-t",
        "5",
        "-T",
        "2",
        "-s",
        "/bin/true",
    ]);
    assert!(
        lease.contains("lease of 10.44.0.1"),
        "{lease}\n{}",
        log_text()
    );
    // The rsync daemon it spawned (a supervised child, so maybe a moment after
    // READY=1) answers with its greeting.
    let greeting = testkit::netns::in_netns(ns.name(), || {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match std::net::TcpStream::connect("10.44.0.1:873") {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut b = [0u8; 64];
                    let n = s.read(&mut b).unwrap_or(0);
                    break String::from_utf8_lossy(&b[..n]).into_owned();
                }
                Err(e) if Instant::now() > deadline => break format!("no rsync daemon: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    assert!(
        greeting.starts_with("@RSYNCD:"),
        "{greeting}\n{}",
        log_text()
    );
    let token = std::fs::metadata(chroot.path("/var/lib/rollout/admin.token")).unwrap();
    assert_eq!(token.permissions().mode() & 0o777, 0o600);

    // SIGTERM, as systemctl stop sends: a clean exit.
    let pid = guard.0.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = guard.0.wait().unwrap();
    assert!(
        status.success(),
        "serve exited with {status} after SIGTERM:\n{}",
        log_text()
    );
}

/// rsyncd as `serve` configures it (`render_config`: `use chroot`, `uid = 0`),
/// run under the unit's bounding set: a node's login reads a directory only its
/// owner may enter (apt's `lists/partial`, 0700 `_apt`) out of an image. Without
/// any one of CAP_SYS_CHROOT, CAP_SETGID, CAP_DAC_READ_SEARCH the same copy fails,
/// so each is needed.
#[test]
fn rsyncd_serves_images_with_exactly_the_units_capabilities() {
    use rollout::images::rsyncd::{
        render_config, render_secrets, ModuleSpec, RsyncUser, RsyncdSettings,
    };
    use std::os::unix::fs::PermissionsExt;
    if !common::can_run(&["rsync", "setpriv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = state.join("images/img/serials/1");
    let private = image.join("var/lib/apt/lists/partial");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(private.join("Packages"), "only _apt may read this").unwrap();
    std::os::unix::fs::chown(&private, Some(100), Some(0)).unwrap();
    std::os::unix::fs::chown(private.join("Packages"), Some(100), Some(0)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        private.join("Packages"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut settings =
        RsyncdSettings::new(&state, Ipv4Addr::LOCALHOST.into(), vec!["127.0.0.1".into()]);
    settings.port = testkit::ports::free_port();
    let module = ModuleSpec {
        name: "img-1".into(),
        image: "img".into(),
        path: image.clone(),
        comment: "img serial 1".into(),
    };
    let user = RsyncUser {
        user: "node1".into(),
        password: "pw0123456789".into(),
        image: "img".into(),
    };
    let config = settings.config_path();
    std::fs::write(
        &config,
        render_config(&settings, &[module], std::slice::from_ref(&user)).unwrap(),
    )
    .unwrap();
    std::fs::write(settings.secrets_path(), render_secrets(&[user]).unwrap()).unwrap();
    std::fs::set_permissions(
        settings.secrets_path(),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let copy = |bounding: &str| -> (bool, String) {
        let mut daemon = Command::new("setpriv")
            .args([
                "--bounding-set",
                bounding,
                "--no-new-privs",
                "--",
                "rsync",
                "--daemon",
                "--no-detach",
            ])
            .arg(format!("--config={}", config.display()))
            .spawn()
            .unwrap();
        let dest = dir.path().join("dest");
        let _ = std::fs::remove_dir_all(&dest);
        let url = format!("rsync://node1@127.0.0.1:{}/img-1/", settings.port);
        let mut out = None;
        for _ in 0..50 {
            let o = Command::new("rsync")
                .args(["-a", &url])
                .arg(&dest)
                .env("RSYNC_PASSWORD", "pw0123456789")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stderr).into_owned();
            let refused = text.contains("Connection refused");
            out = Some((o.status.success(), text));
            if !refused {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
        let (ok, text) = out.unwrap();
        let read = std::fs::read_to_string(dest.join("var/lib/apt/lists/partial/Packages"));
        (
            ok && read.is_ok_and(|t| t == "only _apt may read this"),
            text,
        )
    };
    let unit = setpriv_bounding_set();
    let (ok, text) = copy(&unit);
    assert!(
        ok,
        "the copy failed with the unit's capabilities {unit}: {text}"
    );
    for needed in ["+sys_chroot", "+setgid", "+dac_read_search"] {
        let fewer = unit.replace(&format!(",{needed}"), "");
        assert!(
            !copy(&fewer).0,
            "the copy works without {needed}: drop it from the unit"
        );
    }
}
