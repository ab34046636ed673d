//! Several `rollout serve` sharing one PostgreSQL lease database (`[store] url`):
//! a second server's namespace on the first one's L2, and the test's own view
//! of the database (what the servers wrote, read the way `serve` reads it).

use super::Net;
use rollout::config::{PgTarget, StoreConfig};
use rollout::store::Backend;
use std::path::Path;
use testkit::netns::Netns;
use testkit::postgres::TempPostgres;

/// The second server's address on [`Net`]'s subnet.
pub const SECOND_SERVER_IP: &str = "10.44.0.2";

/// A namespace of its own for a second server, plugged into `net`'s bridge as
/// [`SECOND_SERVER_IP`] (its interface is called `rbr0` too, so one config
/// template serves both servers). Deleted on drop, with the server in it.
pub fn second_namespace(net: &Net) -> Netns {
    // Named after the first server's namespace: tests of one binary run in
    // parallel, each with its own Net.
    let ns = Netns::create(&format!("{}2", net.srv.name())).unwrap_or_else(|e| panic!("{e}"));
    net.srv
        .add_bridge_port("rbr0", "s2", ns.name(), "rbr0")
        .and_then(|()| {
            ns.ip(&[
                "addr",
                "add",
                &format!("{SECOND_SERVER_IP}/{}", net.prefix),
                "dev",
                "rbr0",
            ])
        })
        .and_then(|_| ns.ip(&["link", "set", "rbr0", "up"]))
        .unwrap_or_else(|e| panic!("{e}"));
    ns
}

/// The lease database as the servers see it (superuser, no password).
pub fn backend(pg: &TempPostgres) -> Backend {
    let target = PgTarget::try_from(&StoreConfig {
        url: pg.url(),
        password_file: None,
    })
    .unwrap();
    Backend::new(Path::new("/nonexistent"), Some(&target))
}

/// A server of [`Net`]'s L2 at `address` (its interface `rbr0`), full DHCP
/// from the six addresses 10.44.0.100-105, leases in the database at `url`;
/// `more` is TOML after it (`[[node]]` declarations).
pub fn config_with(dir: &Path, address: &str, url: &str, more: &str) -> std::path::PathBuf {
    super::write_config(
        dir,
        &format!(
            r#"
[server]
interface = "rbr0"
address = "{address}"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.105"]
router = "10.44.0.1"
lease_time = 600
[store]
url = "{url}"
{more}
"#
        ),
    )
}
