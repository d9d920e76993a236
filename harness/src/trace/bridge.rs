//! Bridges and ARP in the trace. A frame that a node's Linux bridge switches from one port to
//! another is not routed there: with br_netfilter loaded (`bridge-nf-call-iptables`), the
//! node's IP hooks still see it, on the bridge device and with its TTL unchanged from
//! prerouting to forward; without br_netfilter they never do. [`Walker::unbridge`] takes such
//! passes out of the observations, so the bridging node is transparent either way (the same
//! trace with and without br_netfilter, the host's or user-mode-linux's kernel) and is never
//! blamed for the routing decision it did not make (`forwarding is off (...br0.forwarding=0)`).
//!
//! [`Walker::no_arp_reply`]: a packet that left through a TAP device (Ethernet carried by a
//! userspace daemon) and arrived nowhere, whose next hop never answered ARP (neighbour
//! discovery in IPv6), was never handed to the daemon at all: the kernel held it in its
//! neighbour queue and dropped it there, so that node and the unanswered neighbour are named,
//! not the VPN daemon.

use super::ruleset::{set_name, Hook, Pos, KINDS};
use super::walk::Walker;
use std::net::IpAddr;

impl Walker<'_, '_> {
    /// Removes, in every node, the observations of packets its bridge switched (seen at
    /// prerouting and forward on the same bridge device with the same TTL).
    pub(super) fn unbridge(&mut self) {
        for node in 0..self.nodes.len() {
            for k in KINDS {
                let pre = self.elems(node, Hook::Pre, Pos::First, k).to_vec();
                let mut bridged: Vec<(u8, String)> = self
                    .elems(node, Hook::Fwd, Pos::First, k)
                    .iter()
                    .filter(|f| pre.iter().any(|p| p.ttl == f.ttl && p.dev == f.dev))
                    .map(|f| (f.ttl, f.dev.clone()))
                    .collect();
                bridged.dedup();
                bridged.retain(|(_, dev)| self.is_bridge(node, dev));
                if bridged.is_empty() {
                    continue;
                }
                for h in [Hook::Pre, Hook::Fwd, Hook::Post] {
                    for p in [Pos::First, Pos::Last] {
                        if let Some(v) = self.obs[node].sets.get_mut(&set_name(h, p, k)) {
                            v.retain(|e| !bridged.iter().any(|(t, d)| e.ttl == *t && e.dev == *d));
                        }
                    }
                }
            }
        }
    }

    fn is_bridge(&self, node: usize, dev: &str) -> bool {
        let argv: Vec<String> = ["ip", "-d", "-o", "link", "show", "dev", dev].iter().map(|s| s.to_string()).collect();
        self.cmd(node, &argv).is_ok_and(|l| l.split_whitespace().any(|w| w == "bridge"))
    }

    /// Why a packet that left `node` through `dev` arrived nowhere, if `dev` is a TAP device and
    /// its next hop never answered ARP / neighbour discovery: `found no neighbour: no ARP reply
    /// for 10.198.100.2`.
    pub(super) fn no_arp_reply(&self, node: usize, dev: &str, saddr: Option<IpAddr>, daddr: Option<IpAddr>) -> Option<String> {
        let daddr = daddr?;
        let link = self.cmd(node, &["ip".into(), "-d".into(), "-o".into(), "link".into(), "show".into(), "dev".into(), dev.into()]).ok()?;
        if !link.contains("tun type tap") {
            return None;
        }
        let route = self.route_get(node, daddr, saddr, None).or_else(|_| self.route_get(node, daddr, None, None)).ok()?;
        let hop = route.split_whitespace().skip_while(|w| *w != "via").nth(1).and_then(|g| g.parse::<IpAddr>().ok()).unwrap_or(daddr);
        let neigh = self.cmd(node, &["ip".into(), "neigh".into(), "show".into(), hop.to_string(), "dev".into(), dev.into()]).ok()?;
        // INCOMPLETE (still asking) or FAILED (gave up) depending on timing: the same verdict.
        if neigh.contains("FAILED") || neigh.contains("INCOMPLETE") || neigh.trim().is_empty() {
            let what = if self.fam.v6 { "neighbour advertisement" } else { "ARP reply" };
            return Some(format!("found no neighbour: no {what} for {hop}"));
        }
        None
    }
}
