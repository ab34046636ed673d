//! An 802.1Q VLAN for the lab without the host kernel's help: this machine's
//! kernel has neither the 8021q module nor VLAN-filtering bridges, so a VLAN
//! sub-interface cannot be made on the server side. A [`VlanPort`] is the
//! switch port instead, in user space: frames tagged with its VLAN id on a
//! trunk interface (a host's veth into the lab bridge, which forwards tagged
//! frames untouched) come out untagged on a tap of its own, and what is
//! written to that tap goes out tagged. The tap then carries the VLAN's
//! subnet like any interface (an address, a DHCP relay).
//!
//! Frames keep their virtio-net header on both sides (the packet socket's
//! `PACKET_VNET_HDR`, the tap's `IFF_VNET_HDR`): a guest's frames arrive with
//! their checksum left to the "hardware" and as 64 KiB TCP segments (GSO), and
//! the header is what tells the receiving stack so; without it the router's
//! UDP drops the DHCP requests as bad checksums and a copy stalls. Moving the
//! tag in or out shifts the header's offsets by four bytes.
//!
//! The port runs on a thread that has entered the host's network namespace
//! (setns applies to the calling thread only), so the test process needs no
//! helper program. Tags arrive either inline or, as the kernel strips them on
//! receive, in the packet socket's auxiliary data; both are read.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_8021Q: u16 = 0x8100;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
/// `struct virtio_net_hdr` (no mergeable buffers): flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset; native (little) endian.
const VNET_HDR: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const PACKET_VNET_HDR: libc::c_int = 15;
const IFF_VNET_HDR: libc::c_int = 0x4000;

/// Shifts a virtio-net header's frame offsets by `delta` bytes (a tag put in
/// or taken out after the MAC addresses).
pub fn shift_vnet_hdr(hdr: &mut [u8], delta: i16) {
    let shift = |h: &mut [u8], at: usize| {
        let v = u16::from_le_bytes([h[at], h[at + 1]]).wrapping_add_signed(delta);
        h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    if hdr[1] != 0 {
        shift(hdr, 2); // hdr_len of a GSO frame
    }
    if hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        shift(hdr, 6); // csum_start
    }
}

/// Inserts the 802.1Q tag `vid` after the two MAC addresses.
pub fn tag(frame: &[u8], vid: u16) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    Some(out)
}

/// The untagged frame if `frame` belongs to VLAN `vid`: tagged inline, or
/// already stripped by the kernel with the tag in `aux_vid`.
pub fn untag(frame: &[u8], aux_vid: Option<u16>, vid: u16) -> Option<Vec<u8>> {
    if let Some(v) = aux_vid {
        return (v & 0x0fff == vid).then(|| frame.to_vec());
    }
    if frame.len() < 18 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_8021Q {
        return None;
    }
    let v = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
    if v != vid {
        return None;
    }
    let mut out = Vec::with_capacity(frame.len() - 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&frame[16..]);
    Some(out)
}

/// A running user-space VLAN port; stopped when dropped.
#[derive(Debug)]
pub struct VlanPort {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for VlanPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn last_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens tap `name` (no packet info header) in the current namespace.
fn open_tap(name: &str) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; TUNSETIFF reads the name and flags.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | IFF_VNET_HDR) as libc::c_short;
    // SAFETY: a valid tun fd and a filled ifreq.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(last_err("TUNSETIFF"));
    }
    Ok(f)
}

/// A packet socket on `iface` that reports stripped VLAN tags.
fn open_trunk(iface: &str) -> io::Result<(OwnedFd, i32)> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (ETH_P_ALL.to_be()) as libc::c_int,
        )
    };
    if fd < 0 {
        return Err(last_err("socket(AF_PACKET)"));
    }
    // SAFETY: fd is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
    if index == 0 {
        return Err(last_err(&format!("no interface {iface}")));
    }
    let one: libc::c_int = 1;
    for (option, name) in [
        (libc::PACKET_AUXDATA, "PACKET_AUXDATA"),
        (PACKET_VNET_HDR, "PACKET_VNET_HDR"),
    ] {
        // SAFETY: setsockopt with an int.
        if unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                option,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } < 0
        {
            return Err(last_err(name));
        }
    }
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index;
    // SAFETY: binding a packet socket to a sockaddr_ll.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } < 0
    {
        return Err(last_err("bind(AF_PACKET)"));
    }
    Ok((fd, index))
}

/// One frame from the trunk: its bytes and the stripped tag, if any; `None`
/// for frames this host sent itself.
fn recv_trunk(fd: i32, buf: &mut [u8]) -> io::Result<Option<(usize, Option<u16>)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut control = [0u8; 256];
    // SAFETY: msghdr pointing at live buffers above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len();
    // SAFETY: recvmsg into the buffers described by msg.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(last_err("recvmsg"));
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    let mut vid = None;
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                let aux = &*(libc::CMSG_DATA(c) as *const libc::tpacket_auxdata);
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    vid = Some(aux.tp_vlan_tci);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some((n as usize, vid)))
}

impl VlanPort {
    /// Enters namespace `netns` on a new thread, creates tap `tap` there and
    /// bridges it to VLAN `vid` on `trunk`. Returns once the tap exists (the
    /// caller then addresses it and brings it up).
    pub fn start(netns: &str, trunk: &str, tap: &str, vid: u16) -> io::Result<VlanPort> {
        let ns = File::open(format!("/run/netns/{netns}"))?;
        let (trunk, tap_name) = (trunk.to_string(), tap.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with an open netns fd.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            let opened = if entered < 0 {
                Err(last_err("setns"))
            } else {
                open_tap(&tap_name).and_then(|t| open_trunk(&trunk).map(|s| (t, s)))
            };
            let (tap, (sock, ifindex)) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            forward(&tap, sock.as_raw_fd(), ifindex, vid, &stopped);
        });
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the VLAN port thread died")))?;
        Ok(VlanPort {
            stop,
            thread: Some(thread),
        })
    }
}

/// Moves frames both ways until `stop`; errors on one frame drop that frame.
fn forward(tap: &File, sock: i32, ifindex: i32, vid: u16, stop: &AtomicBool) {
    // A GSO frame is up to 64 KiB plus its headers.
    let mut buf = vec![0u8; 70000];
    let mut fds = [
        libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sock,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: sockaddr_ll is plain data.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: reading into buf.
            let len = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len()) };
            if len > VNET_HDR as isize {
                let (hdr, frame) = buf[..len as usize].split_at(VNET_HDR);
                if let Some(tagged) = tag(frame, vid) {
                    let mut out = hdr.to_vec();
                    shift_vnet_hdr(&mut out, 4);
                    out.extend_from_slice(&tagged);
                    to.sll_addr[..6].copy_from_slice(&tagged[..6]);
                    // SAFETY: sending a whole frame to the bound interface.
                    unsafe {
                        libc::sendto(
                            sock,
                            out.as_ptr() as *const _,
                            out.len(),
                            0,
                            &to as *const _ as *const libc::sockaddr,
                            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                        );
                    }
                }
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            if let Ok(Some((len, aux))) = recv_trunk(sock, &mut buf) {
                if len > VNET_HDR {
                    let (hdr, frame) = buf[..len].split_at(VNET_HDR);
                    if let Some(untagged) = untag(frame, aux, vid) {
                        let mut out = hdr.to_vec();
                        if untagged.len() < frame.len() {
                            shift_vnet_hdr(&mut out, -4);
                        }
                        out.extend_from_slice(&untagged);
                        // SAFETY: writing one frame to the tap.
                        unsafe {
                            libc::write(tap.as_raw_fd(), out.as_ptr() as *const _, out.len());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(b"payload");
        f
    }

    #[test]
    fn tagging_and_untagging_round_trip() {
        let f = frame(0x0800);
        let t = tag(&f, 100).unwrap();
        assert_eq!(&t[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(t.len(), f.len() + 4);
        assert_eq!(untag(&t, None, 100), Some(f.clone()));
        assert_eq!(untag(&t, None, 200), None, "another VLAN's frame");
        assert_eq!(untag(&f, None, 100), None, "an untagged frame");
        // The kernel stripped the tag and reported it aside.
        assert_eq!(untag(&f, Some(100), 100), Some(f.clone()));
        assert_eq!(
            untag(&f, Some(0x2000 | 100), 100),
            Some(f),
            "priority bits ignored"
        );
        assert_eq!(tag(&[0u8; 10], 100), None);
    }

    #[test]
    fn moving_a_tag_shifts_the_checksum_and_gso_offsets() {
        // NEEDS_CSUM, TCPv4 GSO, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
        let mut h = [1u8, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];
        shift_vnet_hdr(&mut h, 4);
        assert_eq!(h, [1, 1, 70, 0, 0xa8, 0x05, 38, 0, 16, 0]);
        shift_vnet_hdr(&mut h, -4);
        assert_eq!(h, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        // A plain frame with its checksum done: nothing to shift.
        let mut plain = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        shift_vnet_hdr(&mut plain, 4);
        assert_eq!(plain, [0u8; 10]);
    }
}
