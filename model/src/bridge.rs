//! Interfaces inside a node and address spaces: persistent TAP devices (`taps = ["tap0"]`),
//! Linux bridges (`[[nodes.X.bridges]]`, ports among the node's interfaces), and the `space` of
//! a link or LAN (two separate networks may reuse a subnet when each has its own space).

use super::lab::{Bridge, Endpoint, Tap};
use super::raw::RawLab;
use super::step::{Action, Step};
use super::validate::{check_long_name, Addrs, Validator};
use crate::error::InputError;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashMap;
use toml::Spanned;

/// `[[nodes.server.bridges]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBridge {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
}

/// What the bridge validation needs to know of each link/LAN end: its space and whether it has
/// addresses of its own.
#[derive(Default)]
pub(super) struct Spaces {
    ifs: HashMap<(usize, String), (Option<String>, bool)>,
}

impl Spaces {
    pub(super) fn of_ifs<'e>(&mut self, eps: impl IntoIterator<Item = &'e Endpoint>, space: &Option<String>) {
        for e in eps {
            self.ifs.insert((e.node, e.ifname.clone()), (space.clone(), !e.addrs.is_empty()));
        }
    }
}

/// Each node's taps and bridges, in node order.
pub(super) type Inside = Vec<(Vec<Tap>, Vec<Bridge>)>;

impl Validator<'_> {
    /// The addresses written in `s` from byte `from` on (`10.0.0.1/24 2001:db8::1/64`), each a
    /// host address, unique in its space and in its node.
    pub(super) fn addresses(
        &self,
        s: &Spanned<String>,
        from: usize,
        node: usize,
        addrs: &mut Addrs,
        space: &Option<String>,
        owner_words: bool,
    ) -> Result<Vec<IpNet>, InputError> {
        let at = self.inner(s);
        let text = s.get_ref();
        let mut out = Vec::new();
        let mut pos = at + from;
        for w in text.get(from..).unwrap_or("").split_whitespace() {
            let off = text[pos - at..].find(w).map(|i| pos + i).unwrap_or(pos);
            pos = off + w.len();
            if owner_words && (w.starts_with("user=") || w.starts_with("group=")) {
                continue;
            }
            let net: IpNet = w.parse().map_err(|_| {
                self.err(
                    self.at(s, off - at),
                    format!("`{w}` is not an address with a prefix length (CIDR)"),
                    "write it like 10.198.0.10/16 or 2001:db8:198::10/64",
                )
            })?;
            if net.addr() == net.network() && net.prefix_len() < net.max_prefix_len() - 1 {
                return Err(self.err(
                    self.at(s, off - at),
                    format!("`{w}` is the network address of its subnet, not a host address"),
                    "pick a host address inside the subnet",
                ));
            }
            // Unique in its space, and in its node whatever the spaces (a node cannot tell two
            // interfaces with one address apart).
            for key in [(space.clone(), net.addr()), (Some(format!("node#{node}")), net.addr())] {
                if let Some(prev) = addrs.insert(key, self.at(s, off - at)) {
                    let (line, col) = self.sources.line_col(prev);
                    return Err(self.err(
                        self.at(s, off - at),
                        format!("address {} is already used at {}", net.addr(), self.place_of(prev, line, col)),
                        "give every interface its own address (separate networks that reuse a subnet: give each its own `space`)",
                    ));
                }
            }
            out.push(net);
        }
        Ok(out)
    }

    /// A `tcp` step's listener runs on the node that owns the destination: an address reused in
    /// two spaces names no single node.
    pub(super) fn tcp_owners<'s>(&self, addrs: &Addrs, steps: impl Iterator<Item = &'s Step>) -> Result<(), InputError> {
        for st in steps {
            if let Action::Tcp { dest, .. } = &st.action {
                let spaces: Vec<&Option<String>> = addrs
                    .keys()
                    .filter(|(sp, a)| *a == dest.ip() && !sp.as_deref().is_some_and(|s| s.starts_with("node#")))
                    .map(|(sp, _)| sp)
                    .collect();
                if spaces.len() > 1 {
                    return Err(self.err(
                        st.offset,
                        format!("{} is an address in {} address spaces: vpnlab cannot tell which node listens", dest.ip(), spaces.len()),
                        "connect to an address that only one network uses",
                    ));
                }
            }
        }
        Ok(())
    }

    /// A `space = "..."` value: a name, or the default space.
    pub(super) fn space(&self, s: &Option<Spanned<String>>) -> Result<Option<String>, InputError> {
        let Some(s) = s else { return Ok(None) };
        check_long_name(s.get_ref()).map_err(|m| self.err(self.inner(s), m, "name the address space, e.g. space = \"home1\""))?;
        Ok(Some(s.get_ref().clone()))
    }

    /// The nodes' `taps` and `bridges`: names unique in the node, ports that exist, are in one
    /// bridge only and carry no address (a port's frames belong to its bridge), one space per
    /// bridge (that of its link/LAN ports; taps have none).
    pub(super) fn bridges(
        &self,
        raw: &RawLab,
        ifnames: &mut HashMap<(usize, String), usize>,
        addrs: &mut Addrs,
        spaces: &mut Spaces,
    ) -> Result<Inside, InputError> {
        let mut out = Vec::new();
        for (node, (node_name, rn)) in raw.nodes.iter().enumerate() {
            let rn = rn.get_ref();
            let mut taps = Vec::new();
            for t in &rn.taps {
                let name = t.get_ref().split_whitespace().next().unwrap_or("");
                let ep = self.interface(t, 0, node, node_name, name, ifnames, addrs, &None, true)?;
                spaces.ifs.insert((node, ep.ifname.clone()), (None, !ep.addrs.is_empty()));
                let (mut user, mut group) = (None, None);
                for w in t.get_ref().split_whitespace() {
                    let (slot, v) = match w.split_once('=') {
                        Some(("user", v)) => (&mut user, v),
                        Some(("group", v)) => (&mut group, v),
                        _ => continue,
                    };
                    let ok = !v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !ok || slot.is_some() {
                        return Err(self.err(
                            self.at(t, t.get_ref().find(w).unwrap_or(0)),
                            format!("`{w}` is not one user or group name"),
                            "write it like \"tap0 user=nobody group=nogroup\" (a name or a number, once each)",
                        ));
                    }
                    *slot = Some(v.to_string());
                }
                taps.push(Tap { ep, user, group });
            }
            let mut bridges: Vec<Bridge> = Vec::new();
            // port -> (bridge, where it was listed)
            let mut taken: HashMap<String, (String, usize)> = HashMap::new();
            for b in &rn.bridges {
                let b = b.get_ref();
                let name = b.name.get_ref().as_str();
                if name.contains(char::is_whitespace) {
                    return Err(self.err(
                        self.inner(&b.name),
                        format!("`{name}` is not an interface name"),
                        "put the bridge's addresses in `addresses = [\"10.198.0.10/16\"]`",
                    ));
                }
                let mut ports = Vec::new();
                let mut space: Option<(Option<String>, usize)> = None;
                for p in &b.ports {
                    let port = p.get_ref().as_str();
                    let at = self.inner(p);
                    if bridges.iter().any(|x| x.ep.ifname == port) || port == name {
                        return Err(self.err(
                            at,
                            format!("`{port}` is a bridge: a bridge cannot be a port of a bridge"),
                            "list only taps and link/LAN interfaces of the node as ports",
                        ));
                    }
                    if !ifnames.contains_key(&(node, port.to_string())) {
                        return Err(self.err(
                            at,
                            format!("node `{node_name}` has no interface `{port}` to make a port of bridge `{name}`"),
                            format!(
                                "interfaces of `{node_name}`: {} (declare a tap in `taps = [\"{port}\"]`)",
                                self.ifaces_of(node, ifnames)
                            ),
                        ));
                    }
                    if let Some((other, prev)) = taken.insert(port.to_string(), (name.to_string(), at)) {
                        let (line, col) = self.sources.line_col(prev);
                        return Err(self.err(
                            at,
                            format!("`{port}` is already a port of bridge `{other}` ({})", self.place_of(prev, line, col)),
                            "an interface can be a port of one bridge only",
                        ));
                    }
                    let (sp, has_addrs) = spaces.ifs.get(&(node, port.to_string())).cloned().unwrap_or((None, false));
                    if has_addrs {
                        return Err(self.err(
                            at,
                            format!("`{port}` has addresses, but as a port of bridge `{name}` it hands every frame to the bridge"),
                            format!("move its addresses to the bridge (`addresses = [...]` of `{name}`)"),
                        ));
                    }
                    if let Some(sp) = sp {
                        match &space {
                            Some((Some(first), prev)) if *first != sp => {
                                let (line, col) = self.sources.line_col(*prev);
                                return Err(self.err(
                                    at,
                                    format!(
                                        "bridge `{name}` would join address spaces `{first}` (port at {}) and `{sp}`",
                                        self.place_of(*prev, line, col)
                                    ),
                                    "a bridge makes one network: put its ports' links and LANs in one space",
                                ));
                            }
                            _ => space = Some((Some(sp), at)),
                        }
                    }
                    ports.push(port.to_string());
                }
                let space = space.and_then(|s| s.0);
                let mut ep = self.interface(&b.name, 0, node, node_name, name, ifnames, addrs, &space, false)?;
                for a in &b.addresses {
                    ep.addrs.extend(self.addresses(a, 0, node, addrs, &space, false)?);
                }
                bridges.push(Bridge { ep, ports });
            }
            out.push((taps, bridges));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
