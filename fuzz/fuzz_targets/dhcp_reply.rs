//! Any bytes on port 67 or 4011, decoded and answered by the same DhcpCore the
//! server runs, in full and proxy mode. The server must never panic on input.
#![no_main]

use dhcproto::{Encodable, Encoder};
use libfuzzer_sys::fuzz_target;
use rollout::config::DhcpMode;
use rollout::dhcp::leases::{LeaseTable, MemoryLeaseStore, Range};
use rollout::dhcp::pxe::BootTargets;
use rollout::dhcp::{CoreConfig, DhcpCore, Outcome, Subnet, Via};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

fn core(mode: DhcpMode) -> DhcpCore {
    let leases = LeaseTable::load(Box::new(MemoryLeaseStore::default()), HashMap::new()).unwrap();
    DhcpCore::new(
        CoreConfig {
            mode,
            server_ip: Ipv4Addr::new(10, 44, 0, 1),
            local: Subnet {
                range: Some(Range { first: Ipv4Addr::new(10, 44, 0, 100), last: Ipv4Addr::new(10, 44, 0, 103) }),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                router: None,
                dns: vec![],
            },
            relays: vec![],
            lease_time: 600,
            quarantine_time: 60,
            targets: BootTargets::new("http://10.44.0.1"),
            hostnames: HashMap::new(),
        },
        leases,
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = rollout::dhcp::decode::decode(data) else { return };
    for (mode, via) in [
        (DhcpMode::Full, Via::Server),
        (DhcpMode::Proxy, Via::Server),
        (DhcpMode::Proxy, Via::Proxy(SocketAddrV4::new(Ipv4Addr::new(10, 44, 0, 9), 68))),
    ] {
        let mut c = core(mode);
        if let Outcome::Reply(r) = c.handle(&msg, via, 1000) {
            let mut out = Vec::new();
            r.msg.encode(&mut Encoder::new(&mut out)).expect("our replies always encode");
        }
    }
});
