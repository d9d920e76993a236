//! The explainer: why a packet stopped where the walker lost it (firewall, routing decision,
//! no route, a silent tunnel or neighbour), with `ip route get`, sysctls and SNMP evidence, and the
//! one summary line.

use super::ruleset::{Elem, Hook, Kind, Pos};
use super::walk::{End, Walker};
use std::net::IpAddr;

impl Walker<'_, '_> {
    /// Why a node that received an echo request sent no reply.
    pub(super) fn no_reply_why(&self, node: usize, e: &Elem) -> String {
        let n = e.packets;
        let ev = self.evidence(node, &["Ip.OutNoRoutes", "Ip6OutNoRoutes"], n);
        let Some(to) = e.saddr else { return "was not sent".into() };
        match self.route_get(node, to, e.daddr, None) {
            Err(err) if err.contains("unreachable") => format!("found no route ({err}){ev}"),
            Err(err) => format!("could not be routed ({err}){ev}"),
            Ok(_) => {
                let key = format!("net.{}.icmp{}echo_ignore_all", self.fam.sysctl_dir(), if self.fam.v6 { "." } else { "_" });
                if self.sysctl(node, &key).as_deref() == Some("1") {
                    format!("was not sent: the node ignores echo requests ({key}=1)")
                } else {
                    "was not sent (no echo reply reached output)".to_string()
                }
            }
        }
    }

    /// Why a packet that left via `dev` arrived nowhere.
    pub(super) fn lost_why(&self, node: usize, dev: &str, saddr: Option<IpAddr>, daddr: Option<IpAddr>) -> String {
        let link = self
            .cmd(node, &["ip".into(), "-d".into(), "-o".into(), "link".into(), "show".into(), "dev".into(), dev.into()])
            .unwrap_or_default();
        let tunnel =
            ["tun type tun", "tun type tap", "wireguard", "link/ppp", "xfrm", "vti", "gre", "ipip"].iter().find(|t| link.contains(*t));
        if let Some(t) = tunnel {
            if t.starts_with("tun") || *t == "link/ppp" {
                return format!(
                    "entered {dev} (a tunnel served by a userspace daemon) and came out at no node: the VPN daemon did not deliver it{}",
                    daddr.map(|d| format!(" to {d}")).unwrap_or_default()
                );
            }
            return format!("entered tunnel {dev} and came out at no node");
        }
        let Some(daddr) = daddr else { return format!("left via {dev} and was seen arriving at no node") };
        // The next hop: the gateway of the route to daddr (from this source if it is local).
        let route = self.route_get(node, daddr, saddr, None).or_else(|_| self.route_get(node, daddr, None, None));
        let hop = route
            .ok()
            .and_then(|r| r.split_whitespace().skip_while(|w| *w != "via").nth(1).and_then(|g| g.parse::<IpAddr>().ok()))
            .unwrap_or(daddr);
        let neigh =
            self.cmd(node, &["ip".into(), "neigh".into(), "show".into(), hop.to_string(), "dev".into(), dev.into()]).unwrap_or_default();
        // FAILED or INCOMPLETE depending on timing: the same verdict.
        if neigh.contains("FAILED") || neigh.contains("INCOMPLETE") || neigh.trim().is_empty() && dev != "lo" {
            return format!(
                "left via {dev} towards {hop}, which did not answer {}",
                if self.fam.v6 { "neighbour discovery" } else { "ARP" }
            );
        }
        format!("left via {dev} towards {hop} and was seen arriving at no node")
    }

    /// Why the routing decision of `node` neither delivered nor forwarded a packet.
    pub(super) fn not_routed_why(&self, node: usize, e: &Elem, n: u64) -> String {
        let d4 = self.fam.sysctl_dir();
        let rp = self.evidence(node, &["TcpExt.IPReversePathFilter"], n);
        if e.ttl <= 1 {
            return "TTL exceeded".into();
        }
        let Some(daddr) = e.daddr else { return "was neither delivered nor forwarded".into() };
        match self.route_get(node, daddr, e.saddr, Some(&e.dev)) {
            Err(err) if err.contains("cross-device") || !rp.is_empty() => {
                format!("failed the reverse-path filter (no route back to {} via {}; rp_filter){rp}", show(e.saddr), e.dev)
            }
            Err(err) => {
                let key = format!("net.{d4}.conf.{}.forwarding", e.dev);
                if self.sysctl(node, &key).as_deref() == Some("0") {
                    let ev = self.evidence(node, &["Ip.InAddrErrors", "IpExt.InNoRoutes", "Ip6InAddrErrors"], n);
                    format!("was not forwarded: forwarding is off ({key}=0){ev}")
                } else if err.contains("unreachable") {
                    let ev = self.evidence(node, &["IpExt.InNoRoutes", "Ip6InNoRoutes"], n);
                    format!("found no route to {daddr} ({err}){ev}")
                } else {
                    let ev = self.evidence(node, &["IpExt.InNoRoutes", "Ip.InAddrErrors", "Ip6InNoRoutes", "Ip6InAddrErrors"], n);
                    format!("could not be routed to {daddr} ({err}){ev}")
                }
            }
            Ok(route) => {
                if route.starts_with("local ") {
                    return "was for this node but never reached input".into();
                }
                let frag = self
                    .elems(node, Hook::Out, Pos::First, Kind::ErrReq)
                    .iter()
                    .chain(self.elems(node, Hook::Out, Pos::First, Kind::ErrRep))
                    .any(|x| x.code == "frag-needed" || x.itype == "packet-too-big");
                if frag {
                    return "was too big for the next link with DF set (ICMP fragmentation needed sent)".into();
                }
                let ev = self.evidence(node, &["Ip.InDiscards", "Ip.InHdrErrors"], n);
                format!("was dropped after routing, before the forward hook (route: {}){ev}", route)
            }
        }
    }

    /// The one line that says what happened, for a snapshot.
    pub(super) fn summary(&self, src: usize, req: &[End], reply_to: Option<IpAddr>, rep: &[End]) -> String {
        let dest = self.dest;
        let Some(first) = req.first() else { return format!("echo request to {dest}: nothing seen") };
        match first {
            End::Delivered { node, .. } => {
                let to = reply_to.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
                let head = format!("echo request reached {} ({dest}); its reply to {to}", self.name(*node));
                // "its reply to X found no route to X" says X once.
                let once = |why: &str| strip_evidence(why).replace(&format!("no route to {to} "), "no route ");
                match rep.first() {
                    Some(End::Delivered { node: r, .. }) if *r == src => {
                        format!("echo request delivered to {} ({dest}); reply delivered back to {}", self.name(*node), self.name(src))
                    }
                    Some(End::Delivered { node: r, .. }) => {
                        format!("{head} was delivered to {} instead of {}", self.name(*r), self.name(src))
                    }
                    Some(End::Dropped { node: r, why }) => format!("{head} {}", self.dropped(&once(why), *r)),
                    Some(End::Lost { node: r, why, .. }) => format!("{head} {}", self.lost(why, *r)),
                    Some(End::Loop { path, end }) => {
                        format!("{head} looped ({}) until its TTL ran out{}", self.names(path), self.at_node(*end))
                    }
                    None => format!("{head}: nothing seen"),
                }
            }
            End::Dropped { node, why } if *node == src => {
                let why = if why.starts_with(super::kernel::KERNEL) { self.dropped(why, src) } else { strip_evidence(why) };
                format!("echo request to {dest} {why} -> never left {}", self.name(src))
            }
            End::Dropped { node, why } => {
                format!("echo request to {dest} reached {}; it {}", self.name(*node), self.dropped(&strip_evidence(why), *node))
            }
            End::Lost { node, why, .. } => format!("echo request to {dest} {}", self.lost(why, *node)),
            End::Loop { path, end } => {
                format!("echo request to {dest} looped ({}) until its TTL ran out{}", self.names(path), self.at_node(*end))
            }
        }
    }

    /// `left via eth1 ...` -> `left r via eth1 ...`; `entered tun0 ...` -> `entered tun0 at r ...`.
    pub(super) fn lost(&self, why: &str, node: usize) -> String {
        let n = self.name(node);
        if let Some(rest) = why.strip_prefix("left via ") {
            format!("left {n} via {rest}")
        } else if let Some(rest) = why.strip_prefix("entered ") {
            match rest.split_once(' ') {
                Some((dev, more)) => format!("entered {dev} at {n} {more}"),
                None => format!("entered {rest} at {n}"),
            }
        } else {
            format!("{why} (at {n})")
        }
    }

    pub(super) fn at_node(&self, n: Option<usize>) -> String {
        n.map(|n| format!(" at {}", self.name(n))).unwrap_or_default()
    }

    pub(super) fn names(&self, path: &[usize]) -> String {
        path.iter().map(|n| self.name(*n)).collect::<Vec<_>>().join(" -> ")
    }
}

pub(super) fn show(a: Option<IpAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

/// `RTNETLINK answers: Network is unreachable` -> `Network is unreachable`.
pub(super) fn clean_err(text: &str) -> String {
    let t = text.trim();
    let t = t.lines().next().unwrap_or("").trim();
    t.trim_start_matches("RTNETLINK answers:").trim_start_matches("Error:").trim().to_string()
}

/// The summary quotes verdicts without the counter evidence.
pub(super) fn strip_evidence(why: &str) -> String {
    match why.find(" [") {
        Some(i) if why.ends_with(" rose]") => why[..i].to_string(),
        _ => why.to_string(),
    }
}

pub(super) fn icmp_desc(itype: &str, code: &str) -> String {
    match itype {
        "destination-unreachable" => format!("destination-unreachable ({code})"),
        "time-exceeded" => "time-exceeded".into(),
        "redirect" => "redirect".into(),
        t => t.to_string(),
    }
}
