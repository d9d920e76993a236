//! Stage 3, the lab's addresses: WAN subnets that collide with none of the customer's networks,
//! and the LANs behind the server and the client.

use super::meaning::{ClientConf, ServerConf};
use anyhow::Result;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

// ====================================================================== the lab's addresses

pub(super) fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub(super) fn nth(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// A LAN segment of the lab derived from a route.
#[derive(Debug, Clone)]
pub(super) struct LanPlan {
    pub(super) name: String,
    pub(super) net: Ipv4Net,
    /// The router's (server's or client's) interface and address on it.
    pub(super) ifname: String,
    pub(super) router_addr: Ipv4Addr,
    /// The LAN host: node name and address.
    pub(super) host: Option<(String, Ipv4Addr)>,
    /// Where the network comes from (`push "route 10.0.0.0 255.0.0.0"`).
    pub(super) origin: String,
}

#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) client_wan: Ipv4Net,
    pub(super) server_wan: Ipv4Net,
    pub(super) server_lans: Vec<LanPlan>,
    pub(super) client_lans: Vec<LanPlan>,
}

impl Plan {
    pub(super) fn client_ip(&self) -> Ipv4Addr {
        nth(&self.client_wan, 2)
    }
    pub(super) fn wan_client_side(&self) -> Ipv4Addr {
        nth(&self.client_wan, 1)
    }
    pub(super) fn wan_server_side(&self) -> Ipv4Addr {
        nth(&self.server_wan, 1)
    }
    pub(super) fn server_ip(&self) -> Ipv4Addr {
        nth(&self.server_wan, 10)
    }
}

/// Documentation (and other never-routed) ranges the WAN subnets are taken from, in order.
pub(super) const WAN_CANDIDATES: [&str; 8] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "198.18.0.0/24",
    "198.19.0.0/24",
    "100.64.0.0/24",
    "100.64.1.0/24",
    "172.31.254.0/24",
];

/// LANs narrower than this are modelled; broader pushed routes (0.0.0.0/1...) are not networks.
pub(super) const MIN_LAN_PREFIX: u8 = 8;

pub(super) fn lan_plans(
    nets: &[Ipv4Net],
    taken: &mut Vec<Ipv4Net>,
    base: &str,
    hostbase: &str,
    what: &str,
    skipped: &mut Vec<String>,
) -> Vec<LanPlan> {
    let usable: Vec<Ipv4Net> = nets
        .iter()
        .copied()
        .filter(|n| {
            if n.prefix_len() < MIN_LAN_PREFIX {
                skipped.push(format!("{what} {n}: too broad to model as a LAN (not a network the lab can build)"));
                return false;
            }
            if let Some(t) = taken.iter().find(|t| overlaps(t, n)) {
                skipped.push(format!("{what} {n}: overlaps {t} (already in the lab), so no LAN was made for it"));
                return false;
            }
            taken.push(*n);
            true
        })
        .collect();
    let many = usable.len() > 1;
    usable
        .into_iter()
        .enumerate()
        .map(|(i, net)| {
            let suffix = if many { format!("{}", i + 1) } else { String::new() };
            // Hosts: all addresses of a /31 or /32, else network+1 .. broadcast-1.
            let (first, count) =
                if net.prefix_len() >= 31 { (0u32, 1u32 << (32 - net.prefix_len())) } else { (1, (1u32 << (32 - net.prefix_len())) - 2) };
            let router_addr = nth(&net, first);
            let host = (count >= 2).then(|| (format!("{hostbase}{suffix}"), nth(&net, first + 9.min(count - 1))));
            LanPlan { name: format!("{base}{suffix}"), net, ifname: format!("eth{}", i + 1), router_addr, host, origin: String::new() }
        })
        .collect()
}

pub(super) fn plan(s: &ServerConf, c: &ClientConf, skipped: &mut Vec<String>) -> Result<Plan> {
    // The customer's networks: the lab's WANs must not collide with any of them.
    let mut customer: Vec<Ipv4Net> = Vec::new();
    customer.extend(s.pool);
    customer.extend(s.vpn_addr.map(|a| Ipv4Net::new(a, 32).unwrap()));
    customer.extend(s.pushed_routes.iter().chain(&s.client_routes).chain(&c.routes).filter(|n| n.prefix_len() >= MIN_LAN_PREFIX));
    let free: Vec<Ipv4Net> =
        WAN_CANDIDATES.iter().map(|n| n.parse::<Ipv4Net>().unwrap()).filter(|w| !customer.iter().any(|n| overlaps(n, w))).collect();
    let [client_wan, server_wan, ..] = free[..] else {
        anyhow::bail!("the customer's networks cover every range the lab's WAN could use ({})", WAN_CANDIDATES.join(", "));
    };
    let mut taken: Vec<Ipv4Net> = vec![client_wan, server_wan];
    taken.extend(s.pool);
    let mut server_lans = lan_plans(&s.pushed_routes, &mut taken, "lan", "lanhost", "pushed route", skipped);
    for l in &mut server_lans {
        l.origin = format!("push \"route {} {}\"", l.net.network(), l.net.netmask());
    }
    let mut client_lans = lan_plans(&s.client_routes, &mut taken, "clientlan", "clienthost", "server route", skipped);
    for l in &mut client_lans {
        l.origin = format!("route {} {}", l.net.network(), l.net.netmask());
    }
    Ok(Plan { client_wan, server_wan, server_lans, client_lans })
}
