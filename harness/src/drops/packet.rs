//! The first bytes of a dropped packet (from its IP header on), decoded as far as the drop
//! locator needs: addresses, TTL, and the ICMP echo id/seq, an ICMP error's quoted packet, or
//! the UDP/TCP ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    pub l4: L4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    /// ICMP or ICMPv6 echo request / reply.
    Echo {
        reply: bool,
        id: u16,
        seq: u16,
    },
    /// An ICMP error (destination unreachable, time exceeded, packet too big, ...) and the
    /// packet it quotes, as far as the capture reaches.
    IcmpError {
        itype: u8,
        code: u8,
        quoted: Option<Box<Packet>>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
    },
    /// Any other protocol (its number), or a header cut short.
    Other(u8),
}

impl Packet {
    /// Decodes an IPv4 or IPv6 packet from its first bytes; `None` if they are no IP header.
    pub fn parse(b: &[u8]) -> Option<Packet> {
        match b.first()? >> 4 {
            4 if b.len() >= 20 => {
                let ihl = usize::from(b[0] & 0x0f) * 4;
                let src = IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]));
                let dst = IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19]));
                let fragment_offset = u16::from_be_bytes([b[6], b[7]]) & 0x1fff;
                let l4 = if fragment_offset != 0 { L4::Other(b[9]) } else { l4(b[9], b.get(ihl..).unwrap_or(&[]), false) };
                Some(Packet { src, dst, ttl: b[8], l4 })
            }
            6 if b.len() >= 40 => {
                let addr = |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[o..o + 16]).expect("16 bytes")));
                Some(Packet { src: addr(8), dst: addr(24), ttl: b[7], l4: l4(b[6], &b[40..], true) })
            }
            _ => None,
        }
    }

    /// The echo (id, seq) of this packet, or of the echo an ICMP error about it quotes, and
    /// whether it is (about) a reply.
    pub fn echo(&self) -> Option<(bool, u16, u16)> {
        match &self.l4 {
            L4::Echo { reply, id, seq } => Some((*reply, *id, *seq)),
            L4::IcmpError { quoted: Some(q), .. } => match q.l4 {
                L4::Echo { reply, id, seq } => Some((reply, id, seq)),
                _ => None,
            },
            _ => None,
        }
    }
}

fn l4(proto: u8, b: &[u8], v6: bool) -> L4 {
    let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    match proto {
        1 | 58 if b.len() >= 8 => {
            let (itype, code) = (b[0], b[1]);
            let (req, rep) = if v6 { (128, 129) } else { (8, 0) };
            let error = if v6 { (1..=4).contains(&itype) } else { matches!(itype, 3 | 4 | 5 | 11 | 12) };
            if (proto == 58) != v6 {
                L4::Other(proto)
            } else if itype == req || itype == rep {
                L4::Echo { reply: itype == rep, id: u16_at(4), seq: u16_at(6) }
            } else if error {
                L4::IcmpError { itype, code, quoted: Packet::parse(&b[8..]).map(Box::new) }
            } else {
                L4::Other(proto)
            }
        }
        17 if b.len() >= 4 => L4::Udp { sport: u16_at(0), dport: u16_at(2) },
        6 if b.len() >= 4 => L4::Tcp { sport: u16_at(0), dport: u16_at(2) },
        p => L4::Other(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(proto: u8, ttl: u8, src: [u8; 4], dst: [u8; 4], rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, proto, 0, 0];
        b.extend(src);
        b.extend(dst);
        b.extend(rest);
        b
    }

    #[test]
    fn echo_and_quoting_error() {
        let echo = v4(1, 63, [10, 198, 0, 1], [10, 200, 0, 2], &[0, 0, 0, 0, 0x12, 0x34, 0, 2]);
        let p = Packet::parse(&echo).unwrap();
        assert_eq!(p.l4, L4::Echo { reply: true, id: 0x1234, seq: 2 });
        assert_eq!(p.ttl, 63);
        let mut icmp = vec![3, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend(&echo);
        let err = Packet::parse(&v4(1, 64, [203, 0, 113, 1], [10, 198, 0, 1], &icmp)).unwrap();
        assert!(matches!(err.l4, L4::IcmpError { itype: 3, code: 0, .. }));
        assert_eq!(err.echo(), Some((true, 0x1234, 2)));
        assert_eq!(Packet::parse(&[0x45, 0, 0]), None);
        assert_eq!(Packet::parse(&v4(17, 5, [1, 1, 1, 1], [2, 2, 2, 2], &[0, 53, 4, 0])).unwrap().l4, L4::Udp { sport: 53, dport: 1024 });
    }

    #[test]
    fn ipv6_echo_request() {
        let mut b = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
        b.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0u8; 11]).chain(&[1u8]));
        b.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0u8; 11]).chain(&[2u8]));
        b.extend([128, 0, 0, 0, 0, 7, 0, 1]);
        let p = Packet::parse(&b).unwrap();
        assert_eq!(p.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(p.l4, L4::Echo { reply: false, id: 7, seq: 1 });
    }
}
