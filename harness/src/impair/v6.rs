//! What IPv6 adds to the impairment: the raw socket duplicates go out of, sending a copy, and
//! recognising the link-level ICMPv6 messages (neighbour discovery, MLD) that are never counted.

use super::dup_mark;
use super::netlink::{os_err, setsockopt};
use anyhow::{anyhow, Context, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An `AF_INET6` `IPPROTO_RAW` socket (the header is included, as with IPv4's), marked so the
/// rule skips the copies, bound to `ifname`. Opened on a thread inside the node's namespace.
pub(super) fn raw_socket(ifname: &str, queue: u16) -> Result<OwnedFd> {
    let c_if = CString::new(ifname).map_err(|_| anyhow!("NUL in interface name"))?;
    let r = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if r < 0 {
        return Err(os_err("socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)"));
    }
    let raw = unsafe { OwnedFd::from_raw_fd(r) };
    let mark: u32 = dup_mark(queue);
    setsockopt(r, libc::SOL_SOCKET, libc::SO_MARK, &mark).context("SO_MARK on the raw socket")?;
    let dev = c_if.as_bytes_with_nul();
    let rc = unsafe {
        libc::setsockopt(r, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_ptr() as *const libc::c_void, dev.len() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(os_err(&format!("SO_BINDTODEVICE {ifname}")));
    }
    Ok(raw)
}

/// Sends a copy of the IPv6 packet `pkt` (header included) from the raw socket.
pub(super) fn send_copy(raw: &OwnedFd, pkt: &[u8]) -> std::io::Result<()> {
    if pkt.len() < 40 || pkt[0] >> 4 != 6 {
        return Err(std::io::Error::other("not an IPv6 packet"));
    }
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    dst.sin6_addr.s6_addr.copy_from_slice(&pkt[24..40]);
    let r = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            pkt.as_ptr() as *const libc::c_void,
            pkt.len(),
            0,
            &dst as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Is `pkt` an IPv6 link-level control message: ICMPv6 MLD (130-132, 143), router
/// solicitation/advertisement, neighbour solicitation/advertisement or redirect (133-137)?
/// Extension headers (hop-by-hop, as MLD carries, routing, destination options) are skipped.
pub(super) fn is_link_control(pkt: &[u8]) -> bool {
    if pkt.len() < 40 || pkt[0] >> 4 != 6 {
        return false;
    }
    let mut next = pkt[6];
    let mut off = 40;
    loop {
        match next {
            // hop-by-hop, routing, destination options: (length + 1) * 8 bytes
            0 | 43 | 60 => {
                let Some(h) = pkt.get(off..off + 2) else { return false };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            58 => return matches!(pkt.get(off), Some(130..=137 | 143)),
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_link_control;

    fn v6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = next;
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn link_control_is_recognised() {
        assert!(is_link_control(&v6(58, &[135, 0, 0, 0]))); // neighbour solicitation
        assert!(is_link_control(&v6(58, &[136, 0, 0, 0]))); // neighbour advertisement
        assert!(is_link_control(&v6(58, &[133, 0, 0, 0]))); // router solicitation
                                                            // MLDv2 report behind a hop-by-hop header (router alert)
        assert!(is_link_control(&v6(0, &[58, 0, 5, 2, 0, 0, 1, 0, 143, 0, 0, 0])));
        assert!(!is_link_control(&v6(58, &[128, 0, 0, 0]))); // echo request
        assert!(!is_link_control(&v6(58, &[1, 4, 0, 0]))); // destination unreachable
        assert!(!is_link_control(&v6(17, &[0; 8]))); // udp
        assert!(!is_link_control(&v6(0, &[58]))); // truncated
        let mut v4 = vec![0x45u8; 40];
        v4[9] = 1;
        assert!(!is_link_control(&v4));
    }
}
