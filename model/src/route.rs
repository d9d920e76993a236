//! The `ip route` / `ip rule` syntax that lab files and steps use, parsed into typed values that
//! the topology code sends over netlink. Only what the recipes need; anything else is an error
//! that says which word was not understood.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq)]
pub struct NextHop {
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub weight: u8,
    pub onlink: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouteType {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `None` is `default`.
    pub dst: Option<IpNet>,
    pub kind: RouteType,
    pub table: Option<u32>,
    pub metric: Option<u32>,
    pub src: Option<IpAddr>,
    pub scope_link: bool,
    /// One hop for a plain route, several for `nexthop ... nexthop ...`.
    pub hops: Vec<NextHop>,
    pub multipath: bool,
    /// An IPv6 route (`ip -6 route`): from its addresses, or `-6` / `::/0` when it has none.
    pub v6: bool,
    /// The text as written, for the transcript.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub from: Option<IpNet>,
    pub to: Option<IpNet>,
    pub priority: Option<u32>,
    pub table: u32,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub fwmark: Option<u32>,
    /// An IPv6 rule (`ip -6 rule`): from its prefixes, or `-6` when it has none.
    pub v6: bool,
    pub text: String,
}

/// A parse error: the message and the byte offset in the text of the word at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub offset: usize,
    pub msg: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

/// Words with their byte offsets (shared by every one-line syntax: routes, steps, impairments).
pub fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((s, &text[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

fn err(offset: usize, msg: impl Into<String>) -> SyntaxError {
    SyntaxError { offset, msg: msg.into() }
}

/// Parses `10.0.0.0/8`, `10.0.0.1` (a host route) or `default`.
pub fn parse_prefix(word: &str, offset: usize) -> Result<Option<IpNet>, SyntaxError> {
    if word == "default" || word == "0.0.0.0/0" || word == "::/0" {
        return Ok(None);
    }
    if let Ok(net) = word.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(err(offset, format!("`{word}` has host bits set (did you mean `{}`?)", net.trunc())));
        }
        return Ok(Some(net));
    }
    if let Ok(addr) = word.parse::<IpAddr>() {
        return Ok(Some(IpNet::from(addr)));
    }
    Err(err(offset, format!("`{word}` is not a prefix (like 10.198.0.0/16) or `default`")))
}

pub fn parse_addr(word: &str, offset: usize) -> Result<IpAddr, SyntaxError> {
    word.parse::<IpAddr>().map_err(|_| err(offset, format!("`{word}` is not an IP address")))
}

fn number<T: std::str::FromStr>(w: Option<&(usize, &str)>, after: &str, at: usize) -> Result<T, SyntaxError> {
    match w {
        Some((o, s)) => s.parse::<T>().map_err(|_| err(*o, format!("`{after}` wants a number, not `{s}`"))),
        None => Err(err(at, format!("`{after}` wants a value"))),
    }
}

fn value<'a>(w: Option<&(usize, &'a str)>, after: &str, at: usize) -> Result<(usize, &'a str), SyntaxError> {
    w.copied().ok_or_else(|| err(at, format!("`{after}` wants a value")))
}

fn table_id(word: &str, offset: usize) -> Result<u32, SyntaxError> {
    match word {
        "main" => Ok(254),
        "local" => Ok(255),
        "default" => Ok(253),
        _ => word.parse().map_err(|_| err(offset, format!("unknown table `{word}` (use a number, `main` or `local`)"))),
    }
}

/// Parses the arguments of `ip route add`: `PREFIX [via GW] [dev IF] [table T] [metric N]
/// [src A] [scope link] [onlink]`, `TYPE PREFIX` for blackhole/unreachable/prohibit, or
/// `PREFIX nexthop via GW dev IF weight W nexthop ...`.
pub fn parse_route(text: &str) -> Result<Route, SyntaxError> {
    parse_route_inner(text, true)
}

/// For `ip route del`: like [`parse_route`], but `via`/`dev` may be left out (any route to the
/// prefix matches, as with `ip route del PREFIX`).
pub fn parse_route_del(text: &str) -> Result<Route, SyntaxError> {
    parse_route_inner(text, false)
}

/// The address family of one route or rule: decided by `-4`/`-6` in front, or by its first
/// address (`::/0` counts as IPv6); an address of the other family is an error at that word.
#[derive(Default)]
struct Family {
    decided: Option<(bool, String)>,
}

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

impl Family {
    fn see(&mut self, v6: bool, word: &str, offset: usize, what: &str) -> Result<(), SyntaxError> {
        match &self.decided {
            None => {
                self.decided = Some((v6, word.to_string()));
                Ok(())
            }
            Some((f, _)) if *f == v6 => Ok(()),
            Some((f, by)) => Err(err(
                offset,
                format!(
                    "`{word}` is an {} address, but this {what} is {} (`{by}`): write one {what} per address family",
                    family_name(v6),
                    family_name(*f)
                ),
            )),
        }
    }

    /// A prefix (`None` = `default`, any family): `0.0.0.0/0` and `::/0` decide the family.
    fn see_prefix(&mut self, p: Option<IpNet>, word: &str, offset: usize, what: &str) -> Result<(), SyntaxError> {
        match p {
            Some(net) => self.see(net.addr().is_ipv6(), word, offset, what),
            None if word == "::/0" => self.see(true, word, offset, what),
            None if word == "0.0.0.0/0" => self.see(false, word, offset, what),
            None => Ok(()),
        }
    }

    /// A leading `-4` / `-6` (as in `ip -6 route add ...`): consumed, the family decided.
    fn leading(&mut self, w: &[(usize, &str)]) -> usize {
        match w.first() {
            Some((_, "-6")) => {
                self.decided = Some((true, "-6".into()));
                1
            }
            Some((_, "-4")) => {
                self.decided = Some((false, "-4".into()));
                1
            }
            _ => 0,
        }
    }

    fn v6(&self) -> bool {
        self.decided.as_ref().map(|(v6, _)| *v6).unwrap_or(false)
    }
}

/// An IPv6 link-local gateway (`fe80::/10`) is only meaningful with the interface it is on.
fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn parse_route_inner(text: &str, need_hop: bool) -> Result<Route, SyntaxError> {
    let w = words(text);
    if w.is_empty() {
        return Err(err(0, "empty route"));
    }
    let mut fam = Family::default();
    let mut i = fam.leading(&w);
    let mut kind = RouteType::Unicast;
    match w.get(i).map(|x| x.1) {
        Some("blackhole") => kind = RouteType::Blackhole,
        Some("unreachable") => kind = RouteType::Unreachable,
        Some("prohibit") => kind = RouteType::Prohibit,
        _ => {}
    }
    if kind != RouteType::Unicast {
        i += 1;
    }
    let (o, d) = value(w.get(i), "route", 0)?;
    let dst = parse_prefix(d, o)?;
    fam.see_prefix(dst, d, o, "route")?;
    i += 1;
    let mut route = Route {
        dst,
        kind,
        table: None,
        metric: None,
        src: None,
        scope_link: false,
        hops: Vec::new(),
        multipath: false,
        v6: false,
        text: text.trim().to_string(),
    };
    let mut hop = NextHop { via: None, dev: None, weight: 1, onlink: false };
    let mut via_at = 0;
    let mut in_nexthop = false;
    while i < w.len() {
        let (o, word) = w[i];
        match word {
            "via" => {
                let (vo, v) = value(w.get(i + 1), "via", o)?;
                let a = parse_addr(v, vo)?;
                fam.see(a.is_ipv6(), v, vo, "route")?;
                hop.via = Some(a);
                via_at = vo;
                i += 1;
            }
            "dev" => {
                hop.dev = Some(value(w.get(i + 1), "dev", o)?.1.to_string());
                i += 1;
            }
            "weight" if in_nexthop => {
                let n: u8 = number(w.get(i + 1), "weight", o)?;
                if n == 0 {
                    return Err(err(w[i + 1].0, "weight must be 1..255"));
                }
                hop.weight = n;
                i += 1;
            }
            "onlink" => hop.onlink = true,
            "nexthop" => {
                if in_nexthop {
                    link_local_needs_dev(&hop, via_at)?;
                    route.hops.push(std::mem::replace(&mut hop, NextHop { via: None, dev: None, weight: 1, onlink: false }));
                } else if hop.via.is_some() || hop.dev.is_some() {
                    return Err(err(o, "put `via`/`dev` after each `nexthop`, not before the first one"));
                }
                in_nexthop = true;
                route.multipath = true;
            }
            "table" => {
                let (to, t) = value(w.get(i + 1), "table", o)?;
                route.table = Some(table_id(t, to)?);
                i += 1;
            }
            "metric" | "priority" | "preference" => {
                route.metric = Some(number(w.get(i + 1), word, o)?);
                i += 1;
            }
            "src" => {
                let (so, s) = value(w.get(i + 1), "src", o)?;
                let a = parse_addr(s, so)?;
                fam.see(a.is_ipv6(), s, so, "route")?;
                route.src = Some(a);
                i += 1;
            }
            "scope" => {
                let (so, s) = value(w.get(i + 1), "scope", o)?;
                match s {
                    "link" => route.scope_link = true,
                    "global" | "universe" => route.scope_link = false,
                    _ => return Err(err(so, format!("unknown scope `{s}` (use `link` or `global`)"))),
                }
                i += 1;
            }
            "proto" => {
                i += 1; // accepted for copy-paste from `ip route`, ignored
            }
            _ => {
                return Err(err(
                    o,
                    format!("`{word}` is not understood here (known: via, dev, table, metric, src, scope, onlink, nexthop ... weight)"),
                ))
            }
        }
        i += 1;
    }
    if kind == RouteType::Unicast {
        if hop.via.is_none() && hop.dev.is_none() && need_hop && (!in_nexthop || route.hops.is_empty()) {
            return Err(err(text.len(), "a route needs `via GATEWAY` or `dev IFNAME` (or `nexthop ...`)"));
        }
        link_local_needs_dev(&hop, via_at)?;
        route.hops.push(hop);
    }
    route.v6 = fam.v6();
    Ok(route)
}

fn link_local_needs_dev(hop: &NextHop, via_at: usize) -> Result<(), SyntaxError> {
    match hop.via {
        Some(a) if is_link_local(a) && hop.dev.is_none() => {
            Err(err(via_at, format!("`{a}` is a link-local address: say which interface it is on (`via {a} dev IFNAME`)")))
        }
        _ => Ok(()),
    }
}

/// Parses the arguments of `ip rule add`: `[from P] [to P] [iif IF] [oif IF] [fwmark N]
/// [priority N] table T`.
pub fn parse_rule(text: &str) -> Result<Rule, SyntaxError> {
    let w = words(text);
    let mut rule = Rule {
        from: None,
        to: None,
        priority: None,
        table: 0,
        iif: None,
        oif: None,
        fwmark: None,
        v6: false,
        text: text.trim().to_string(),
    };
    let mut table = None;
    let mut fam = Family::default();
    let mut i = fam.leading(&w);
    let mut prefix = |v: &str, vo: usize| -> Result<Option<IpNet>, SyntaxError> {
        if v == "all" {
            return Ok(None);
        }
        let p = parse_prefix(v, vo)?;
        fam.see_prefix(p, v, vo, "rule")?;
        Ok(p)
    };
    while i < w.len() {
        let (o, word) = w[i];
        let (vo, v) = value(w.get(i + 1), word, o)?;
        match word {
            "from" => rule.from = prefix(v, vo)?,
            "to" => rule.to = prefix(v, vo)?,
            "priority" | "pref" | "prio" => rule.priority = Some(number(w.get(i + 1), word, o)?),
            "table" | "lookup" => table = Some(table_id(v, vo)?),
            "iif" => rule.iif = Some(v.to_string()),
            "oif" => rule.oif = Some(v.to_string()),
            "fwmark" => {
                let n = if let Some(hex) = v.strip_prefix("0x") { u32::from_str_radix(hex, 16).ok() } else { v.parse().ok() };
                rule.fwmark = Some(n.ok_or_else(|| err(vo, format!("`fwmark` wants a number, not `{v}`")))?);
            }
            _ => return Err(err(o, format!("`{word}` is not understood here (known: from, to, iif, oif, fwmark, priority, table)"))),
        }
        i += 2;
    }
    rule.table = table.ok_or_else(|| err(text.len(), "a rule needs `table N`"))?;
    rule.v6 = fam.v6();
    Ok(rule)
}

impl Route {
    /// Interface names the route refers to.
    pub fn devs(&self) -> impl Iterator<Item = &str> {
        self.hops.iter().filter_map(|h| h.dev.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_default_routes() {
        let r = parse_route("default via 192.0.2.1").unwrap();
        assert_eq!(r.dst, None);
        assert_eq!(r.hops[0].via, Some("192.0.2.1".parse().unwrap()));
        let r = parse_route("10.200.0.0/24 via 10.198.0.10 dev eth1 table 100 metric 5").unwrap();
        assert_eq!(r.dst, Some("10.200.0.0/24".parse().unwrap()));
        assert_eq!(r.table, Some(100));
        assert_eq!(r.metric, Some(5));
        assert_eq!(r.hops[0].dev.as_deref(), Some("eth1"));
    }

    #[test]
    fn multipath_route() {
        let r = parse_route("default scope global nexthop via 10.0.1.1 dev eth1 weight 1 nexthop via 10.0.2.1 dev eth2 weight 2 nexthop via 10.0.3.1 dev eth3 weight 1").unwrap();
        assert!(r.multipath);
        assert_eq!(r.hops.len(), 3);
        assert_eq!(r.hops[1].weight, 2);
        assert_eq!(r.hops[2].dev.as_deref(), Some("eth3"));
    }

    #[test]
    fn route_errors_point_at_the_word() {
        let e = parse_route("10.0.0.0/33 via 1.2.3.4").unwrap_err();
        assert_eq!(e.offset, 0);
        let e = parse_route("10.0.0.0/8 via 1.2.3.x").unwrap_err();
        assert_eq!(e.offset, 15);
        assert!(e.msg.contains("not an IP address"));
        let e = parse_route("10.0.0.0/8 gateway 1.2.3.4").unwrap_err();
        assert_eq!(e.offset, 11);
        let e = parse_route("10.0.0.1/8 dev eth0").unwrap_err();
        assert!(e.msg.contains("host bits"), "{}", e.msg);
        assert!(parse_route("10.0.0.0/8").unwrap_err().msg.contains("needs `via"));
        assert!(parse_route("blackhole 10.0.0.0/8").is_ok());
        assert!(parse_route_del("10.0.0.0/8").is_ok());
    }

    #[test]
    fn rules() {
        let r = parse_rule("from 192.168.2.10 priority 50 table 100").unwrap();
        assert_eq!(r.from, Some("192.168.2.10/32".parse().unwrap()));
        assert_eq!(r.priority, Some(50));
        assert_eq!(r.table, 100);
        assert!(parse_rule("from 192.168.2.10 priority 50").unwrap_err().msg.contains("table"));
        assert_eq!(parse_rule("from 1.2.3.4 flavour x table 1").unwrap_err().offset, 13);
    }

    #[test]
    fn ipv6_routes_take_their_family_from_their_addresses() {
        let r = parse_route("2001:db8:200::/64 via 2001:db8:198::10").unwrap();
        assert!(r.v6);
        assert_eq!(r.dst, Some("2001:db8:200::/64".parse().unwrap()));
        assert!(!parse_route("10.0.0.0/8 via 10.0.0.1").unwrap().v6);
        // `default` has no family of its own: the gateway, `::/0` or `-6` decides.
        let r = parse_route("default via 2001:db8::1").unwrap();
        assert!(r.v6 && r.dst.is_none());
        let r = parse_route("::/0 dev eth0").unwrap();
        assert!(r.v6 && r.dst.is_none());
        assert!(parse_route("-6 default dev eth0 table 100").unwrap().v6);
        assert!(!parse_route("default dev eth0").unwrap().v6);
        assert!(parse_route("-6 unreachable default table 100").unwrap().v6);
        let r = parse_route("2001:db8:200::/64 via fe80::1 dev eth1 src 2001:db8:198::10 table 100").unwrap();
        assert_eq!((r.v6, r.table), (true, Some(100)));
        let r = parse_route("2001:db8:9::/48 nexthop via 2001:db8:1::1 dev eth1 weight 1 nexthop via fe80::2 dev eth2 weight 3").unwrap();
        assert!(r.v6 && r.multipath);
        assert_eq!(r.hops.len(), 2);
        assert_eq!(r.hops[1].weight, 3);
    }

    #[test]
    fn ipv6_route_errors_point_at_the_word() {
        let e = parse_route("2001:db8:200::/64 via 10.198.0.10").unwrap_err();
        assert_eq!(e.offset, 22);
        assert!(e.msg.contains("`10.198.0.10` is an IPv4 address, but this route is IPv6 (`2001:db8:200::/64`)"), "{}", e.msg);
        let e = parse_route("-6 default via 10.0.0.1").unwrap_err();
        assert_eq!(e.offset, 15);
        assert!(e.msg.contains("IPv6 (`-6`)"), "{}", e.msg);
        let e = parse_route("10.0.0.0/8 via 10.0.0.1 src 2001:db8::1").unwrap_err();
        assert_eq!(e.offset, 28);
        let e = parse_route("default nexthop via 2001:db8::1 dev eth0 nexthop via 10.0.0.1 dev eth1").unwrap_err();
        assert_eq!(e.offset, 53);
        let e = parse_route("2001:db8:200::1/64 via 2001:db8::1").unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.msg.contains("did you mean `2001:db8:200::/64`"), "{}", e.msg);
        let e = parse_route("2001:db8:200::/129 dev eth0").unwrap_err();
        assert_eq!(e.offset, 0);
        let e = parse_route("2001:db8:200::/64 via 2001:db8::g").unwrap_err();
        assert_eq!(e.offset, 22);
        assert!(e.msg.contains("not an IP address"), "{}", e.msg);
        let e = parse_route("default via fe80::1").unwrap_err();
        assert_eq!(e.offset, 12);
        assert!(e.msg.contains("link-local") && e.msg.contains("dev IFNAME"), "{}", e.msg);
        let e = parse_route("default nexthop via fe80::1 weight 1 nexthop via fe80::2 dev eth1").unwrap_err();
        assert_eq!(e.offset, 20);
    }

    #[test]
    fn ipv6_rules() {
        let r = parse_rule("from 2001:db8:200::/64 priority 50 table 100").unwrap();
        assert!(r.v6);
        assert_eq!(r.from, Some("2001:db8:200::/64".parse().unwrap()));
        assert!(parse_rule("-6 from all table 100").unwrap().v6);
        assert!(parse_rule("to ::/0 table 100").unwrap().v6);
        assert!(!parse_rule("from all table 100").unwrap().v6);
        let e = parse_rule("from 2001:db8::/64 to 10.0.0.0/8 table 100").unwrap_err();
        assert_eq!(e.offset, 22);
        assert!(e.msg.contains("but this rule is IPv6"), "{}", e.msg);
        let e = parse_rule("-4 from 2001:db8::/64 table 100").unwrap_err();
        assert_eq!(e.offset, 8);
    }
}
