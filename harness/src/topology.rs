//! The lab's network, built through rtnetlink (never by shelling out to `ip`): one network
//! namespace per node and per LAN segment, veth pairs created directly inside their two
//! namespaces (never in the host's), LAN bridges, the nodes' taps and bridges (`inside.rs`),
//! addresses, links up, sysctls, routes (multipath, tables) and rules; each netlink socket is
//! opened on a thread inside its namespace.

use crate::model::route::{Route, RouteType, Rule};
use crate::model::{Endpoint, Lab};
use crate::ns::NetNs;
use anyhow::{anyhow, bail, Context, Result};
use futures::future::try_join_all;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::{RouteScope, RouteType as NlRouteType};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder, RouteNextHopBuilder};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
mod inside;

/// Per-namespace sysctls set in every node before the lab's own: ICMP errors are never
/// rate-limited (IPv4: no type in the rate mask; IPv6: no minimum interval).
pub const DETERMINISM_SYSCTLS: [(&str, &str); 2] = [("net.ipv4.icmp_ratemask", "0"), ("net.ipv6.icmp.ratelimit", "0")];

/// Per-namespace sysctls set before any interface is created (see `Topology::build`).
pub const NO_DAD_SYSCTLS: [(&str, &str); 2] = [("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")];

/// One namespace with its netlink handle.
pub struct NsHandle {
    pub ns: NetNs,
    pub nl: Handle,
}

impl NsHandle {
    /// Opens a netlink socket on a thread inside `ns`; its connection task runs on the current
    /// tokio runtime.
    pub fn open(ns: NetNs) -> Result<NsHandle> {
        let rt = tokio::runtime::Handle::current();
        let (conn, nl) = ns.run(move || {
            let _guard = rt.enter();
            rtnetlink::new_connection().map(|(c, h, _)| (c, h))
        })??;
        tokio::spawn(conn);
        Ok(NsHandle { ns, nl })
    }

    pub async fn index(&self, ifname: &str) -> Result<u32> {
        let mut links = self.nl.link().get().match_name(ifname.to_string()).execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(l.header.index),
            Ok(None) => bail!("node `{}` has no interface `{ifname}`", self.ns.name),
            Err(e) => Err(anyhow!("node `{}`: looking up interface `{ifname}`: {e}", self.ns.name)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.nl
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("node `{}`: link {index} up", self.ns.name))
    }

    /// Writes a `net.*` sysctl of this namespace (on a thread inside it).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        let value_shown = value.clone();
        self.ns
            .run(move || std::fs::write(&path, format!("{value}\n")))?
            .with_context(|| format!("node `{}`: sysctl {key}={value}", self.ns.name, value = value_shown))
    }

    pub async fn route(&self, route: &Route, add: bool) -> Result<()> {
        let mut msg = self.route_message(route).await?;
        if !add {
            // Like `ip route del`: match any protocol and scope (pppd's or the kernel's routes).
            msg.header.protocol = rtnetlink::packet_route::route::RouteProtocol::Unspec;
            msg.header.scope = RouteScope::NoWhere;
        }
        let r = if add { self.nl.route().add(msg).execute().await } else { self.nl.route().del(msg).execute().await };
        r.map_err(|e| anyhow!("node `{}`: ip route {} {}: {}", self.ns.name, if add { "add" } else { "del" }, route.text, nl_err(&e)))
    }

    async fn route_message(&self, route: &Route) -> Result<rtnetlink::packet_route::route::RouteMessage> {
        // The model gives a route one family (`Route::v6`); every address in it is of that family.
        let mismatch = || anyhow!("route `{}` mixes IPv4 and IPv6 addresses", route.text);
        let mut devs = Vec::new();
        for h in &route.hops {
            devs.push(match &h.dev {
                Some(dev) => Some(self.index(dev).await?),
                None => None,
            });
        }
        let mut hops = Vec::new();
        if route.multipath {
            for (h, dev) in route.hops.iter().zip(&devs) {
                let nh = if route.v6 { RouteNextHopBuilder::new_ipv6() } else { RouteNextHopBuilder::new_ipv4() };
                let mut nh = nh.weight(h.weight.saturating_sub(1));
                if let Some(i) = dev {
                    nh = nh.interface(*i);
                }
                if let Some(via) = h.via {
                    if via.is_ipv6() != route.v6 {
                        return Err(mismatch());
                    }
                    nh = nh.via(via).map_err(|e| anyhow!("{e:?}"))?;
                }
                if h.onlink {
                    nh = nh.onlink();
                }
                hops.push(nh.build());
            }
        }
        let single = if route.multipath { None } else { route.hops.first() };
        let msg = if route.v6 {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => Ok(a),
                IpAddr::V4(_) => Err(mismatch()),
            };
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new();
            if let Some(dst) = route.dst {
                b = b.destination_prefix(v6(dst.addr())?, dst.prefix_len());
            }
            if let Some(src) = route.src {
                b = b.pref_source(v6(src)?);
            }
            if let Some(via) = single.and_then(|h| h.via) {
                b = b.gateway(v6(via)?);
            }
            common(b, route, devs.first().copied().flatten(), hops).build()
        } else {
            let v4 = |a: IpAddr| match a {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(_) => Err(mismatch()),
            };
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new();
            if let Some(dst) = route.dst {
                b = b.destination_prefix(v4(dst.addr())?, dst.prefix_len());
            }
            if let Some(src) = route.src {
                b = b.pref_source(v4(src)?);
            }
            if let Some(via) = single.and_then(|h| h.via) {
                b = b.gateway(v4(via)?);
            }
            common(b, route, devs.first().copied().flatten(), hops).build()
        };
        Ok(msg)
    }

    pub async fn rule(&self, rule: &Rule, add: bool) -> Result<()> {
        let mismatch = || anyhow!("rule `{}` mixes IPv4 and IPv6 prefixes", rule.text);
        let r = if rule.v6 {
            let mut req = self.nl.rule().add().v6();
            for (p, dst) in [(rule.from, false), (rule.to, true)] {
                if let Some(p) = p {
                    let IpAddr::V6(a) = p.addr() else { return Err(mismatch()) };
                    req = if dst { req.destination_prefix(a, p.prefix_len()) } else { req.source_prefix(a, p.prefix_len()) };
                }
            }
            self.rule_send(req, rule, add).await
        } else {
            let mut req = self.nl.rule().add().v4();
            for (p, dst) in [(rule.from, false), (rule.to, true)] {
                if let Some(p) = p {
                    let IpAddr::V4(a) = p.addr() else { return Err(mismatch()) };
                    req = if dst { req.destination_prefix(a, p.prefix_len()) } else { req.source_prefix(a, p.prefix_len()) };
                }
            }
            self.rule_send(req, rule, add).await
        };
        r.map_err(|e| anyhow!("node `{}`: ip rule {} {}: {}", self.ns.name, if add { "add" } else { "del" }, rule.text, nl_err(&e)))
    }

    /// The family-independent part of a rule (table, priority, interfaces, fwmark), then the
    /// request: add, or delete the rule this message describes.
    async fn rule_send<T>(&self, req: rtnetlink::RuleAddRequest<T>, rule: &Rule, add: bool) -> Result<(), rtnetlink::Error> {
        let mut req = req.table_id(rule.table).action(rtnetlink::packet_route::rule::RuleAction::ToTable);
        if let Some(p) = rule.priority {
            req = req.priority(p);
        }
        if let Some(i) = &rule.iif {
            req = req.input_interface(i.clone());
        }
        if let Some(o) = &rule.oif {
            req = req.output_interface(o.clone());
        }
        if let Some(m) = rule.fwmark {
            req = req.fw_mark(m);
        }
        if add {
            req.execute().await
        } else {
            let msg = req.message_mut().clone();
            self.nl.rule().del(msg).execute().await
        }
    }
}

/// What IPv4 and IPv6 routes share: table, metric, type, scope, output interface, onlink,
/// nexthops.
fn common<T>(
    mut b: RouteMessageBuilder<T>,
    route: &Route,
    dev: Option<u32>,
    hops: Vec<rtnetlink::packet_route::route::RouteNextHop>,
) -> RouteMessageBuilder<T> {
    if let Some(t) = route.table {
        b = b.table_id(t);
    }
    if let Some(m) = route.metric {
        b = b.priority(m);
    }
    b = b.kind(match route.kind {
        RouteType::Unicast => NlRouteType::Unicast,
        RouteType::Blackhole => NlRouteType::BlackHole,
        RouteType::Unreachable => NlRouteType::Unreachable,
        RouteType::Prohibit => NlRouteType::Prohibit,
    });
    let link_scope = route.scope_link
        || (route.kind == RouteType::Unicast && !route.multipath && route.hops.first().map(|h| h.via.is_none()).unwrap_or(false));
    if link_scope {
        b = b.scope(RouteScope::Link);
    }
    if route.multipath {
        b = b.multipath(hops);
    } else if let Some(h) = route.hops.first() {
        if let Some(i) = dev {
            b = b.output_interface(i);
        }
        if h.onlink {
            b = b.onlink();
        }
    }
    b
}

/// A readable netlink error (`File exists (os error 17)` rather than a debug dump).
pub fn nl_err(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(code) => std::io::Error::from_raw_os_error(-code.get()).to_string(),
            None => "ack".into(),
        },
        other => other.to_string(),
    }
}

/// The built network: node namespaces (same order as `lab.nodes`) and LAN namespaces.
/// A built lab's network: one handle per node and per LAN segment. It owns the tokio runtime
/// its rtnetlink connections run on (async pays while building: every namespace's links and
/// addresses go in concurrently); callers see only synchronous methods.
pub struct Topology {
    pub nodes: Vec<NsHandle>,
    pub lans: Vec<NsHandle>,
    /// Dropped last (fields drop in order): the connections' tasks end after the handles.
    rt: tokio::runtime::Runtime,
}

impl Topology {
    /// Creates the namespaces and everything in them ([`Lab`]'s links, LANs, taps, bridges,
    /// addresses, sysctls, routes, rules).
    pub fn build(lab: &Lab) -> Result<Topology> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the netlink runtime")?;
        // Blocking work (namespaces, sysctls) happens here, between the async phases.
        let mut names: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
        names.extend(lab.lans.iter().map(|l| format!("lan:{}", l.name)));
        let mut nodes = {
            let _g = rt.enter();
            NetNs::create_many(&names)?.into_iter().map(NsHandle::open).collect::<Result<Vec<_>>>()?
        };
        let lans = nodes.split_off(lab.nodes.len());
        nodes.iter_mut().zip(&lab.nodes).for_each(|(h, n)| h.ns.hostname = (n.hostname != n.name).then(|| n.hostname.clone()));
        let topo = Topology { nodes, lans, rt };
        // IPv6 addresses usable at once: no DAD in a lab (addresses are unique by validation), so
        // none is "tentative" for ~2 s after its link comes up. Set before any interface exists
        // (each copies `default`; `all` too: DAD runs when either is on). Skipped without IPv6.
        for h in topo.nodes.iter().chain(topo.lans.iter()) {
            if h.ns.run(|| std::path::Path::new("/proc/sys/net/ipv6").exists())? {
                for (k, v) in NO_DAD_SYSCTLS {
                    h.sysctl(k, v)?;
                }
            }
        }

        topo.rt.block_on(topo.links(lab))?;
        topo.inside(lab)?; // taps and bridges inside nodes (topology/inside.rs)
        topo.rt.block_on(topo.addresses(lab))?;
        for (h, node) in topo.nodes.iter().zip(&lab.nodes) {
            // Determinism: the kernel rate-limits the ICMP errors it sends (per destination,
            // a token bucket refilled once a second), so whether a probe's "net unreachable"
            // shows up would depend on how many came before it and when. No type is
            // rate-limited in a lab node (the lab's own sysctls may still set it).
            for (k, v) in DETERMINISM_SYSCTLS {
                h.sysctl(k, v)?;
            }
            for (k, v) in &node.sysctls {
                h.sysctl(k, v)?;
            }
        }
        topo.rt.block_on(topo.routes(lab))?;
        topo.wait_ipv6_ready(lab, IPV6_READY_DEADLINE)?;
        Ok(topo)
    }

    /// Adds (or deletes) a route in node `node` (a lab step).
    pub fn route(&self, node: usize, route: &Route, add: bool) -> Result<()> {
        self.rt.block_on(self.nodes[node].route(route, add))
    }

    /// Adds (or deletes) a policy rule in node `node` (a lab step).
    pub fn rule(&self, node: usize, rule: &Rule, add: bool) -> Result<()> {
        self.rt.block_on(self.nodes[node].rule(rule, add))
    }

    /// Loopbacks up, veth pairs, LAN bridges and their ports.
    async fn links(&self, lab: &Lab) -> Result<()> {
        let topo = self;
        // Loopbacks up.
        try_join_all(topo.nodes.iter().chain(topo.lans.iter()).map(|h| async move {
            let lo = h.index("lo").await?;
            h.set_up(lo).await
        }))
        .await?;

        // veth pairs, each created in `a`'s namespace with its peer placed straight into `b`'s.
        try_join_all(lab.links.iter().map(|l| {
            let a = &topo.nodes[l.a.node];
            let b = &topo.nodes[l.b.node];
            async move { veth(a, &l.a.ifname, b, &l.b.ifname, l.mtu).await }
        }))
        .await?;

        // LANs: a bridge in the segment's namespace, one veth per member.
        try_join_all(lab.lans.iter().zip(&topo.lans).map(|(lan, seg)| {
            let nodes = &topo.nodes;
            async move {
                seg.nl
                    .link()
                    .add(LinkBridge::new("br0").up().build())
                    .execute()
                    .await
                    .map_err(|e| anyhow!("LAN `{}`: creating its bridge: {}", lan.name, nl_err(&e)))?;
                let br = seg.index("br0").await?;
                for (i, m) in lan.members.iter().enumerate() {
                    let port = format!("p{i}");
                    veth(seg, &port, &nodes[m.node], &m.ifname, None).await?;
                    let idx = seg.index(&port).await?;
                    seg.nl
                        .link()
                        .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
                        .execute()
                        .await
                        .map_err(|e| anyhow!("LAN `{}`: attaching {port}: {}", lan.name, nl_err(&e)))?;
                }
                Ok::<_, anyhow::Error>(())
            }
        }))
        .await?;

        Ok(())
    }

    /// Every node's addresses, its interfaces up.
    async fn addresses(&self, lab: &Lab) -> Result<()> {
        let topo = self;
        let mut per_node: HashMap<usize, Vec<&Endpoint>> = HashMap::new();
        for e in lab.endpoints() {
            per_node.entry(e.node).or_default().push(e);
        }
        try_join_all(lab.nodes.iter().enumerate().map(|(i, node)| {
            let h = &topo.nodes[i];
            let eps = per_node.get(&i).cloned().unwrap_or_default();
            async move {
                for e in eps {
                    let idx = h.index(&e.ifname).await?;
                    for a in &e.addrs {
                        h.nl.address()
                            .add(idx, a.addr(), a.prefix_len())
                            .execute()
                            .await
                            .map_err(|err| anyhow!("node `{}`: address {a} on {}: {}", node.name, e.ifname, nl_err(&err)))?;
                    }
                    h.set_up(idx).await?;
                }
                Ok::<_, anyhow::Error>(())
            }
        }))
        .await?;
        Ok(())
    }

    /// Every node's routes, then its rules.
    async fn routes(&self, lab: &Lab) -> Result<()> {
        let topo = self;
        try_join_all(lab.nodes.iter().enumerate().map(|(i, node)| {
            let h = &topo.nodes[i];
            async move {
                for r in &node.routes {
                    h.route(r, true).await?;
                }
                for r in &node.rules {
                    h.rule(r, true).await?;
                }
                Ok::<_, anyhow::Error>(())
            }
        }))
        .await?;
        Ok(())
    }

    /// Waits until every IPv6 address of the lab can be used: the interface's link is ready
    /// (the kernel's link watch runs up to a second after both ends of a veth are up; until
    /// then IPv6 keeps its addresses tentative and has not joined their solicited-node groups,
    /// so a neighbour solicitation for them goes unanswered), each address is neither
    /// tentative nor failed, its solicited-node group is joined, and the interface has a
    /// usable link-local address. Read from `/proc/thread-self/net/{if_inet6,igmp6}` inside
    /// each node, every few milliseconds until `deadline`.
    pub fn wait_ipv6_ready(&self, lab: &Lab, deadline: std::time::Duration) -> Result<()> {
        let until = std::time::Instant::now() + deadline;
        let mut want: HashMap<usize, Vec<(String, Ipv6Addr)>> = HashMap::new();
        for e in lab.endpoints().filter(|e| inside::has_carrier_at_build(lab, e)) {
            for a in &e.addrs {
                if let IpAddr::V6(v6) = a.addr() {
                    want.entry(e.node).or_default().push((e.ifname.clone(), v6));
                }
            }
        }
        for (node, addrs) in want {
            let h = &self.nodes[node];
            loop {
                let (inet6, igmp6) = h.ns.run(|| {
                    let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default();
                    (read("if_inet6"), read("igmp6"))
                })?;
                let missing = ipv6_not_ready(&addrs, &inet6, &igmp6);
                match missing {
                    None => break,
                    Some(what) if std::time::Instant::now() >= until => {
                        bail!("node `{}`: {what} {:?} after the links came up", h.ns.name, deadline)
                    }
                    Some(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
        Ok(())
    }
}

/// How long links get to become ready for IPv6 (the kernel's link watch: about a second).
pub const IPV6_READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What keeps `addrs` (interface, address) from being usable, by the node's `if_inet6` and
/// `igmp6` tables; `None` when everything is ready.
pub fn ipv6_not_ready(addrs: &[(String, Ipv6Addr)], if_inet6: &str, igmp6: &str) -> Option<String> {
    const TENTATIVE: u32 = 0x40;
    const DADFAILED: u32 = 0x08;
    let hex = |a: &Ipv6Addr| a.octets().iter().map(|b| format!("{b:02x}")).collect::<String>();
    // if_inet6: "20010db8000100000000000000000002 02 40 00 80 eth0" (address, index, prefix
    // length, scope, flags, name); igmp6: "2 eth0 ff0200000000000000000001ff000002 1 00000004 0".
    let usable = |addr_hex: &str, ifname: &str| {
        if_inet6.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6
                && f[5] == ifname
                && (addr_hex.is_empty() && f[0].starts_with("fe80") || f[0] == addr_hex)
                && u32::from_str_radix(f[4], 16).map(|fl| fl & (TENTATIVE | DADFAILED) == 0).unwrap_or(false)
        })
    };
    for (ifname, a) in addrs {
        if !usable(&hex(a), ifname) {
            return Some(format!("address {a} on {ifname} was still tentative"));
        }
        if !usable("", ifname) {
            return Some(format!("{ifname} had no usable link-local address"));
        }
        let o = a.octets();
        let group = format!("ff0200000000000000000001ff{:02x}{:02x}{:02x}", o[13], o[14], o[15]);
        if !igmp6.lines().any(|l| l.split_whitespace().nth(1) == Some(ifname) && l.split_whitespace().nth(2) == Some(group.as_str())) {
            return Some(format!("{ifname} had not joined the solicited-node group of {a}"));
        }
    }
    None
}

async fn veth(a: &NsHandle, a_if: &str, b: &NsHandle, b_if: &str, mtu: Option<u32>) -> Result<()> {
    let mut peer =
        LinkMessageBuilder::<LinkUnspec>::new().name(b_if.to_string()).append_extra_attribute(LinkAttribute::NetNsFd(b.ns.raw_fd()));
    let mut link = LinkVeth::new(a_if, b_if);
    if let Some(m) = mtu {
        peer = peer.mtu(m);
        link = link.mtu(m);
    }
    let msg = link.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
    a.nl.link().add(msg).execute().await.map_err(|e| anyhow!("veth {}:{a_if} <-> {}:{b_if}: {}", a.ns.name, b.ns.name, nl_err(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error names the key and the value it could not write (it once printed `key=`).
    #[test]
    #[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
    fn sysctl_error_shows_key_and_value() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ns = NetNs::create_many(&["a".into()]).unwrap().pop().unwrap();
        let h = rt.block_on(async { NsHandle::open(ns) }).unwrap();
        h.sysctl("net.ipv4.conf.all.forwarding", "1").unwrap();
        let e = format!("{:#}", h.sysctl("net.ipv4.vpnlab_no_such_key", "7").unwrap_err());
        assert!(e.starts_with("node `a`: sysctl net.ipv4.vpnlab_no_such_key=7: "), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    /// r has two uplinks to b; IPv6 multipath in table 100, a rule for a's prefix, a
    /// link-local gateway, an unreachable route; removed and re-added through the step path.
    const LAB6: &str = r#"[lab]
title = "routes6"
[nodes.a]
routes = ["default via 2001:db8:1::1"]
[nodes.r]
sysctl = { "net.ipv6.conf.all.forwarding" = "1" }
routes = ["2001:db8:9::/48 table 100 nexthop via 2001:db8:2::2 dev eth1 weight 1 nexthop via 2001:db8:3::2 dev eth2 weight 3",
          "2001:db8:8::/48 via fe80::2 dev eth1", "unreachable 2001:db8:7::/48", "-6 default dev eth2 table 101"]
rules  = ["from 2001:db8:1::/64 priority 50 table 100", "-6 iif eth0 priority 60 table 101"]
[nodes.b]
routes = ["default via 2001:db8:2::1"]
[[links]]
a = "a:eth0 2001:db8:1::2/64"
b = "r:eth0 2001:db8:1::1/64"
[[links]]
a = "r:eth1 2001:db8:2::1/64"
b = "b:eth0 2001:db8:2::2/64"
[[links]]
a = "r:eth2 2001:db8:3::1/64"
b = "b:eth1 2001:db8:3::2/64"
[scenarios.s]
steps = []
"#;

    #[test]
    #[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
    fn ipv6_multipath_tables_and_rules_reach_the_kernel() {
        assert!(crate::env::is_root(), "building namespaces needs root: sudo -E cargo test");
        let dir = tempfile::tempdir().unwrap();
        let lab = crate::model::parse(&dir.path().join("lab.toml"), LAB6).unwrap_or_else(|e| panic!("{e:?}"));
        let pid = crate::ns::PidNs::create().unwrap();
        let topo = Topology::build(&lab).unwrap_or_else(|e| panic!("{e:#}"));
        let r = &topo.nodes[1];
        let sh = |args: &str| {
            let argv: Vec<String> = args.split(' ').map(String::from).collect();
            let out = crate::process::run_capture(&r.ns, &pid, &argv, dir.path(), std::time::Duration::from_secs(10)).unwrap();
            assert!(out.success(), "{args}: {}", out.text);
            out.text
        };
        let t100 = sh("ip -6 route show table 100");
        assert!(t100.contains("2001:db8:9::/48 proto static metric 1024"), "{t100}");
        assert!(t100.contains("nexthop via 2001:db8:2::2 dev eth1 weight 1"), "{t100}");
        assert!(t100.contains("nexthop via 2001:db8:3::2 dev eth2 weight 3"), "{t100}");
        assert!(sh("ip -6 route show table 101").contains("default dev eth2"), "table 101");
        let main = sh("ip -6 route show");
        assert!(main.contains("2001:db8:8::/48 via fe80::2 dev eth1"), "{main}");
        assert!(main.contains("unreachable 2001:db8:7::/48"), "{main}");
        let rules = sh("ip -6 rule");
        assert!(rules.contains("50:\tfrom 2001:db8:1::/64 lookup 100"), "{rules}");
        assert!(rules.contains("60:\tfrom all iif eth0 lookup 101"), "{rules}");
        assert!(!sh("ip -4 rule").contains("lookup 100"), "the IPv6 rule is not an IPv4 one");
        // The step path: delete and re-add; a route the kernel refuses fails with its reason.
        let route = crate::model::route::parse_route_del("2001:db8:7::/48").unwrap();
        topo.route(1, &route, false).unwrap();
        assert!(!sh("ip -6 route show").contains("2001:db8:7::/48"));
        let rule = crate::model::route::parse_rule("from 2001:db8:1::/64 priority 50 table 100").unwrap();
        topo.rule(1, &rule, false).unwrap();
        assert!(!sh("ip -6 rule").contains("lookup 100"));
        topo.rule(1, &rule, true).unwrap();
        let bad = crate::model::route::parse_route("2001:db8:6::/48 via 2001:db8:99::1").unwrap();
        let e = topo.route(1, &bad, true).unwrap_err().to_string();
        assert!(e.contains("ip route add 2001:db8:6::/48 via 2001:db8:99::1") && e.contains("No route to host"), "{e}");
        // And traffic flows: a's packets match the rule, miss table 100, fall through to main.
        let a = &topo.nodes[0];
        let argv: Vec<String> = "ping -n -c 1 -W 2 2001:db8:3::2".split(' ').map(String::from).collect();
        let out = crate::process::run_capture(&a.ns, &pid, &argv, dir.path(), std::time::Duration::from_secs(10)).unwrap();
        assert!(out.text.contains("1 received"), "{}", out.text);
    }

    #[test]
    fn ipv6_readiness_from_the_proc_tables() {
        let addrs = [("eth0".to_string(), "2001:db8:1::2".parse().unwrap())];
        let ready_inet6 = "20010db8000100000000000000000002 02 40 00 80     eth0\nfe80000000000000085cd6fffe3adf02 02 40 20 80     eth0\n";
        let igmp6 = "2    eth0            ff0200000000000000000001ff000002     1 00000004 0\n";
        assert_eq!(ipv6_not_ready(&addrs, ready_inet6, igmp6), None);
        let tentative = ready_inet6.replacen(" 80 ", " c0 ", 1);
        assert!(ipv6_not_ready(&addrs, &tentative, igmp6).unwrap().contains("tentative"));
        let no_ll = ready_inet6.lines().next().unwrap();
        assert!(ipv6_not_ready(&addrs, no_ll, igmp6).unwrap().contains("link-local"));
        assert!(ipv6_not_ready(&addrs, ready_inet6, "").unwrap().contains("solicited-node"));
        assert!(ipv6_not_ready(&addrs, &ready_inet6.replace("eth0", "eth1"), igmp6).is_some());
    }
}
