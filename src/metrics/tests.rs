use super::scrape::count_established;
use super::*;
use crate::inventory::NodeState;

/// The value of the sample `name{labels}` in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn counters_render_with_labels_help_and_type() {
    let m = Metrics::new();
    m.dhcp("discover", "offer");
    m.dhcp("discover", "offer");
    m.dhcp("request", "ack");
    m.tftp("complete");
    m.tftp_bytes.inc_by(4096);
    m.bmc("ipmi", "status", "unreachable");
    m.install_finished("installed");
    m.installs_started.inc();
    let t = m.render();
    assert!(t.contains("# TYPE rollout_dhcp_packets counter"), "{t}");
    assert!(
        t.contains("# HELP rollout_dhcp_packets DHCP requests handled"),
        "{t}"
    );
    assert_eq!(
        sample(
            &t,
            r#"rollout_dhcp_packets_total{type="discover",outcome="offer"}"#
        ),
        Some(2.0),
        "{t}"
    );
    assert_eq!(
        sample(
            &t,
            r#"rollout_dhcp_packets_total{type="request",outcome="ack"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&t, "rollout_tftp_sent_bytes_total"), Some(4096.0));
    assert_eq!(
        sample(&t, r#"rollout_tftp_transfers_total{outcome="complete"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &t,
            r#"rollout_bmc_calls_total{driver="ipmi",operation="status",outcome="unreachable"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&t, "rollout_installs_started_total"), Some(1.0));
    assert_eq!(
        sample(
            &t,
            r#"rollout_installs_finished_total{outcome="installed"}"#
        ),
        Some(1.0)
    );
    assert!(
        t.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
}

#[test]
fn histograms_have_buckets_sum_and_count() {
    let m = Metrics::new();
    m.install_duration.observe(100.0);
    m.install_duration.observe(700.0);
    m.copy_throughput.observe(50.0 * 1048576.0);
    let t = m.render();
    assert!(
        t.contains("# TYPE rollout_install_duration_seconds histogram"),
        "{t}"
    );
    assert_eq!(
        sample(&t, "rollout_install_duration_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        sample(&t, "rollout_install_duration_seconds_sum"),
        Some(800.0)
    );
    // Buckets 30, 60, 120, …: 100 s falls in le=120, both in le=960.
    assert_eq!(
        sample(&t, r#"rollout_install_duration_seconds_bucket{le="60.0"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&t, r#"rollout_install_duration_seconds_bucket{le="120.0"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&t, r#"rollout_install_duration_seconds_bucket{le="960.0"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&t, "rollout_copy_throughput_bytes_per_second_count"),
        Some(1.0)
    );
}

#[test]
fn http_requests_are_labelled_by_route_template() {
    let m = Metrics::new();
    let route = http::route_label(Some("/api/v1/nodes/{id}"), "/api/v1/nodes/node1");
    m.http_requests
        .get_or_create(&HttpLabels {
            method: http::method_label(&axum::http::Method::GET),
            route,
            status: 200,
        })
        .inc();
    m.http_requests
        .get_or_create(&HttpLabels {
            method: http::method_label(&axum::http::Method::from_bytes(b"PROPFIND").unwrap()),
            route: http::route_label(None, "/wp-login.php"),
            status: 404,
        })
        .inc();
    let t = m.render();
    assert_eq!(
        sample(
            &t,
            r#"rollout_http_requests_total{method="GET",route="/api/v1/nodes/{id}",status="200"}"#
        ),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        sample(
            &t,
            r#"rollout_http_requests_total{method="other",route="unmatched",status="404"}"#
        ),
        Some(1.0),
        "{t}"
    );
}

#[test]
fn file_trees_get_one_label_each_and_strangers_none() {
    assert_eq!(http::route_label(None, "/boot/vmlinuz"), "/boot/{*path}");
    assert_eq!(
        http::route_label(None, "/ipxe/snponly.efi"),
        "/ipxe/{*path}"
    );
    assert_eq!(http::route_label(None, "/bootx/../etc"), "unmatched");
    assert_eq!(http::route_label(None, "/boot"), "unmatched");
    assert_eq!(http::route_label(None, "/.env"), "unmatched");
}

#[test]
fn scrape_time_gauges_read_their_sources() {
    let m = Metrics::new();
    assert!(
        !m.render().contains("rollout_dhcp_leases"),
        "no source, no gauge"
    );
    m.set_sources(
        Box::new(|| {
            vec![RangeUsage {
                range: "10.44.0.100-10.44.0.199".into(),
                active: 3,
                free: 95,
            }]
        }),
        Box::new(|| {
            count_by_state([
                NodeState::Installed,
                NodeState::Installed,
                NodeState::Failed,
            ])
        }),
        None,
    );
    let t = m.render();
    assert_eq!(
        sample(
            &t,
            r#"rollout_dhcp_leases{range="10.44.0.100-10.44.0.199",state="active"}"#
        ),
        Some(3.0),
        "{t}"
    );
    assert_eq!(
        sample(
            &t,
            r#"rollout_dhcp_leases{range="10.44.0.100-10.44.0.199",state="free"}"#
        ),
        Some(95.0)
    );
    assert_eq!(sample(&t, r#"rollout_nodes{state="installed"}"#), Some(2.0));
    assert_eq!(sample(&t, r#"rollout_nodes{state="failed"}"#), Some(1.0));
    assert_eq!(
        sample(&t, r#"rollout_nodes{state="installing"}"#),
        Some(0.0),
        "an empty state reads 0"
    );
    assert!(
        !t.contains("rollout_rsync_connections"),
        "no rsync port, no gauge"
    );
}

#[test]
fn healthz_lists_only_the_failures_that_happened() {
    let m = Metrics::new();
    assert_eq!(m.healthz(), "", "a trouble-free server adds nothing");
    assert_eq!(Metrics::bump(&m.dhcp_panics), 1);
    assert_eq!(Metrics::bump(&m.dhcp_panics), 2);
    Metrics::bump(&m.rsyncd_config_failures);
    assert_eq!(m.healthz(), "dhcp_panics 2\nrsyncd_config_failures 1\n");
    // The same counters are on /metrics.
    assert_eq!(sample(&m.render(), "rollout_dhcp_panics_total"), Some(2.0));
}

#[test]
fn established_connections_are_counted_by_local_port() {
    // 873 = 0x0369; state 01 = ESTABLISHED, 0A = LISTEN.
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0369 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0369 0100007F:D6A2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D6A2 0100007F:0369 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:0369 0100007F:D6A4 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:0369 0100007F:D6A6 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0 0 0 0 0 0
";
    assert_eq!(
        count_established(table, 873),
        2,
        "the listener, the client side and TIME_WAIT do not count"
    );
    assert_eq!(count_established(table, 8873), 0);
}
