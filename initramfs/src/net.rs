//! Network interfaces: names and MACs, link state, and IPv4 configuration
//! through the classic ioctls (no `ip` binary in the initramfs).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op} on {iface}: {source}")]
    Ioctl {
        op: &'static str,
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// (name, lower-case MAC) of every interface under `sys_class_net`.
pub fn interfaces(sys_class_net: &Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut v: Vec<(String, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mac = std::fs::read_to_string(e.path().join("address")).ok()?;
            Some((name, mac.trim().to_ascii_lowercase()))
        })
        .collect();
    v.sort();
    v
}

/// The MAC a NIC was made with: a bond gives its members its own address, and
/// the bonding driver keeps the original in `bonding_slave/perm_hwaddr`.
pub fn permanent_mac(dir: &Path) -> Option<String> {
    [dir.join("bonding_slave/perm_hwaddr"), dir.join("address")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|m| m.trim().to_ascii_lowercase())
}

/// (name, permanent MAC) of the physical NICs under `sys_class_net` (those with
/// a `device`): no bond, VLAN or loopback, which share or lack a MAC.
pub fn physical_interfaces(sys_class_net: &Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut v: Vec<(String, String)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| {
            let mac = permanent_mac(&e.path())?;
            Some((e.file_name().to_string_lossy().into_owned(), mac))
        })
        .collect();
    v.sort();
    v
}

pub fn find_by_mac(ifaces: &[(String, String)], mac: &str) -> Option<String> {
    let mac = mac.to_ascii_lowercase();
    ifaces
        .iter()
        .find(|(_, m)| *m == mac)
        .map(|(n, _)| n.clone())
}

/// Waits until the link reports carrier; returns whether it did.
pub fn wait_for_carrier(iface: &str, timeout: Duration) -> bool {
    let path = format!("/sys/class/net/{iface}/carrier");
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::fs::read_to_string(&path)
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

// struct ifreq is 40 bytes on Linux: a 16-byte name and a 24-byte union.
#[repr(C)]
struct IfReqAddr {
    name: [u8; 16],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// struct rtentry from <net/route.h>, which the libc crate lacks on glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn name16(iface: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    let b = iface.as_bytes();
    let len = b.len().min(15);
    n[..len].copy_from_slice(&b[..len]);
    n
}

fn sin(a: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// An AF_INET datagram socket for interface ioctls.
pub(crate) fn ctl_socket(iface: &str) -> Result<OwnedFd, NetError> {
    // SAFETY: plain socket(2); ownership moves into OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Ioctl {
            op: "socket",
            iface: iface.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is valid and not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl<T>(
    fd: &OwnedFd,
    req: libc::c_ulong,
    arg: &mut T,
    op: &'static str,
    iface: &str,
) -> Result<(), NetError> {
    // SAFETY: arg is a properly laid out request struct for `req`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc != 0 {
        return Err(NetError::Ioctl {
            op,
            iface: iface.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

pub fn set_up(iface: &str) -> Result<(), NetError> {
    change_flags(iface, "bring up (SIOCSIFFLAGS)", |f| {
        f | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short
    })
}

/// Takes `iface` down (the bonding driver enslaves only interfaces that are down).
pub fn set_down(iface: &str) -> Result<(), NetError> {
    change_flags(iface, "take down (SIOCSIFFLAGS)", |f| {
        f & !(libc::IFF_UP as libc::c_short)
    })
}

/// Takes every interface but loopback down, before the reboot: the kernel
/// then resets each NIC with its queues stopped. The installer kernel's
/// virtio-net, reset by the reboot with its NAPI poll still live, was seen (in
/// QEMU under TCG, twice in many lab runs) to spin in softirq for good,
/// so the node never rebooted. Failures are ignored: the reboot goes on.
pub fn quiesce(sys_class_net: &Path) {
    for (name, _) in interfaces(sys_class_net) {
        if name != "lo" {
            let _ = set_down(&name);
        }
    }
}

/// Reads `iface`'s flags, changes them with `change` and writes them back.
fn change_flags(
    iface: &str,
    op: &'static str,
    change: impl Fn(libc::c_short) -> libc::c_short,
) -> Result<(), NetError> {
    let fd = ctl_socket(iface)?;
    let mut r = IfReqFlags {
        name: name16(iface),
        flags: 0,
        _pad: [0; 22],
    };
    ioctl(&fd, libc::SIOCGIFFLAGS as _, &mut r, "SIOCGIFFLAGS", iface)?;
    r.flags = change(r.flags);
    ioctl(&fd, libc::SIOCSIFFLAGS as _, &mut r, op, iface)
}

/// Sets address, netmask and broadcast, and a default route via `gateway`.
pub fn configure(
    iface: &str,
    addr: Ipv4Addr,
    netmask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetError> {
    let fd = ctl_socket(iface)?;
    let mut r = IfReqAddr {
        name: name16(iface),
        addr: sin(addr),
        _pad: [0; 8],
    };
    ioctl(
        &fd,
        libc::SIOCSIFADDR as _,
        &mut r,
        "set address (SIOCSIFADDR)",
        iface,
    )?;
    r.addr = sin(netmask);
    ioctl(
        &fd,
        libc::SIOCSIFNETMASK as _,
        &mut r,
        "set netmask (SIOCSIFNETMASK)",
        iface,
    )?;
    let bcast = Ipv4Addr::from(u32::from(addr) | !u32::from(netmask));
    r.addr = sin(bcast);
    ioctl(
        &fd,
        libc::SIOCSIFBRDADDR as _,
        &mut r,
        "set broadcast (SIOCSIFBRDADDR)",
        iface,
    )?;
    set_up(iface)?;
    if let Some(gw) = gateway {
        let mut dev = name16(iface);
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sin(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sin(gw),
            rt_genmask: sin(Ipv4Addr::UNSPECIFIED),
            rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr() as *mut libc::c_char,
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match ioctl(
            &fd,
            libc::SIOCADDRT as _,
            &mut rt,
            "add default route (SIOCADDRT)",
            iface,
        ) {
            // A lease renewal on an already configured interface.
            Err(NetError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_structs_match_kernel_sizes() {
        assert_eq!(std::mem::size_of::<IfReqAddr>(), 40);
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        // x86_64 struct rtentry.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn physical_nics_by_their_permanent_mac() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("devices");
        for (n, m, perm) in [
            ("bond0", "52:54:00:00:00:01\n", None),
            ("bond0.100", "52:54:00:00:00:01\n", None),
            ("eth0", "52:54:00:00:00:01\n", Some("52:54:00:00:00:01\n")),
            ("eth1", "52:54:00:00:00:01\n", Some("52:54:00:00:00:02\n")),
            ("eth2", "52:54:00:00:00:03\n", None),
        ] {
            let d = dir.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("address"), m).unwrap();
            if n.starts_with("eth") {
                std::fs::create_dir_all(dev.join(n)).unwrap();
                std::os::unix::fs::symlink(dev.join(n), d.join("device")).unwrap();
            }
            if let Some(p) = perm {
                std::fs::create_dir_all(d.join("bonding_slave")).unwrap();
                std::fs::write(d.join("bonding_slave/perm_hwaddr"), p).unwrap();
            }
        }
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            physical_interfaces(dir.path()),
            [
                s("eth0", "52:54:00:00:00:01"),
                s("eth1", "52:54:00:00:00:02"),
                s("eth2", "52:54:00:00:00:03")
            ]
        );
    }

    #[test]
    fn finds_interfaces_by_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (n, m) in [
            ("eth0", "52:54:00:00:00:02\n"),
            ("eth1", "52:54:00:AA:00:01\n"),
            ("lo", "00:00:00:00:00:00\n"),
        ] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
            std::fs::write(dir.path().join(n).join("address"), m).unwrap();
        }
        let ifs = interfaces(dir.path());
        assert_eq!(ifs.len(), 3);
        assert_eq!(
            find_by_mac(&ifs, "52:54:00:aa:00:01").as_deref(),
            Some("eth1")
        );
        assert_eq!(find_by_mac(&ifs, "52:54:00:aa:00:09"), None);
    }
}
