//! The lab's network, built through rtnetlink (never by shelling out to `ip`): one network
//! namespace per node and per LAN segment, veth pairs created directly inside their two
//! namespaces (never in the host's), bridges, addresses, links up, sysctls, routes (multipath
//! and other tables) and rules. Each netlink socket is opened on a thread that has entered its
//! namespace.

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
use std::net::{IpAddr, Ipv4Addr};

/// One namespace with its netlink handle.
/// Per-namespace sysctls set in every node before the lab's own: ICMP errors are never
/// rate-limited (IPv4: no type in the rate mask; IPv6: no minimum interval).
pub const DETERMINISM_SYSCTLS: [(&str, &str); 2] = [("net.ipv4.icmp_ratemask", "0"), ("net.ipv6.icmp.ratelimit", "0")];

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
        let v4 = |a: IpAddr| -> Result<Ipv4Addr> {
            match a {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(_) => bail!("IPv6 routes are not supported yet: {}", route.text),
            }
        };
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new();
        if let Some(dst) = route.dst {
            b = b.destination_prefix(v4(dst.addr())?, dst.prefix_len());
        }
        if let Some(t) = route.table {
            b = b.table_id(t);
        }
        if let Some(m) = route.metric {
            b = b.priority(m);
        }
        if let Some(src) = route.src {
            b = b.pref_source(v4(src)?);
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
            let mut hops = Vec::new();
            for h in &route.hops {
                let mut nh = RouteNextHopBuilder::new_ipv4().weight(h.weight.saturating_sub(1));
                if let Some(dev) = &h.dev {
                    nh = nh.interface(self.index(dev).await?);
                }
                if let Some(via) = h.via {
                    nh = nh.via(IpAddr::V4(v4(via)?)).map_err(|e| anyhow!("{e:?}"))?;
                }
                if h.onlink {
                    nh = nh.onlink();
                }
                hops.push(nh.build());
            }
            b = b.multipath(hops);
        } else if let Some(h) = route.hops.first() {
            if let Some(via) = h.via {
                b = b.gateway(v4(via)?);
            }
            if let Some(dev) = &h.dev {
                b = b.output_interface(self.index(dev).await?);
            }
            if h.onlink {
                b = b.onlink();
            }
        }
        Ok(b.build())
    }

    pub async fn rule(&self, rule: &Rule, add: bool) -> Result<()> {
        let mut req = self.nl.rule().add().v4().table_id(rule.table).action(rtnetlink::packet_route::rule::RuleAction::ToTable);
        if let Some(p) = rule.priority {
            req = req.priority(p);
        }
        if let Some(f) = rule.from {
            let IpAddr::V4(a) = f.addr() else { bail!("IPv6 rules are not supported yet") };
            req = req.source_prefix(a, f.prefix_len());
        }
        if let Some(t) = rule.to {
            let IpAddr::V4(a) = t.addr() else { bail!("IPv6 rules are not supported yet") };
            req = req.destination_prefix(a, t.prefix_len());
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
        let r = if add {
            req.execute().await
        } else {
            let msg = req.message_mut().clone();
            self.nl.rule().del(msg).execute().await
        };
        r.map_err(|e| anyhow!("node `{}`: ip rule {} {}: {}", self.ns.name, if add { "add" } else { "del" }, rule.text, nl_err(&e)))
    }
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
    /// Creates the namespaces and everything in them ([`Lab`]'s links, LANs, addresses,
    /// sysctls, routes, rules).
    pub fn build(lab: &Lab) -> Result<Topology> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the netlink runtime")?;
        // Blocking work (entering namespaces, writing sysctls) happens here, between the
        // runtime's async phases, never inside them.
        let mut names: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
        names.extend(lab.lans.iter().map(|l| format!("lan:{}", l.name)));
        let mut nodes = {
            let _g = rt.enter();
            NetNs::create_many(&names)?.into_iter().map(NsHandle::open).collect::<Result<Vec<_>>>()?
        };
        let lans = nodes.split_off(lab.nodes.len());
        let topo = Topology { nodes, lans, rt };
        topo.rt.block_on(topo.links(lab))?;
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
}
