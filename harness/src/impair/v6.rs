//! What IPv6 adds to the impairment: the raw socket duplicates go out of, and recognising the link-level ICMPv6 messages (neighbour discovery, MLD) that are never counted.

use anyhow::Result;
use std::os::fd::OwnedFd;

/// An `AF_INET6` `IPPROTO_RAW` socket for duplicates (see [`super::netlink::raw_socket`]).
pub(super) fn raw_socket(ifname: &str, queue: u16) -> Result<OwnedFd> {
    super::netlink::raw_socket(libc::AF_INET6, ifname, queue)
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
