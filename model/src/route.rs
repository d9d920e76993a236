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
    if word == "default" || word == "0.0.0.0/0" {
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

fn parse_route_inner(text: &str, need_hop: bool) -> Result<Route, SyntaxError> {
    let w = words(text);
    if w.is_empty() {
        return Err(err(0, "empty route"));
    }
    let mut i = 0;
    let mut kind = RouteType::Unicast;
    match w[0].1 {
        "blackhole" => kind = RouteType::Blackhole,
        "unreachable" => kind = RouteType::Unreachable,
        "prohibit" => kind = RouteType::Prohibit,
        _ => {}
    }
    if kind != RouteType::Unicast {
        i += 1;
    }
    let (o, d) = value(w.get(i), "route", 0)?;
    let dst = parse_prefix(d, o)?;
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
        text: text.trim().to_string(),
    };
    let mut hop = NextHop { via: None, dev: None, weight: 1, onlink: false };
    let mut in_nexthop = false;
    while i < w.len() {
        let (o, word) = w[i];
        match word {
            "via" => {
                let (vo, v) = value(w.get(i + 1), "via", o)?;
                hop.via = Some(parse_addr(v, vo)?);
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
                route.src = Some(parse_addr(s, so)?);
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
        route.hops.push(hop);
    }
    Ok(route)
}

/// Parses the arguments of `ip rule add`: `[from P] [to P] [iif IF] [oif IF] [fwmark N]
/// [priority N] table T`.
pub fn parse_rule(text: &str) -> Result<Rule, SyntaxError> {
    let w = words(text);
    let mut rule =
        Rule { from: None, to: None, priority: None, table: 0, iif: None, oif: None, fwmark: None, text: text.trim().to_string() };
    let mut table = None;
    let mut i = 0;
    while i < w.len() {
        let (o, word) = w[i];
        let (vo, v) = value(w.get(i + 1), word, o)?;
        match word {
            "from" => rule.from = if v == "all" { None } else { parse_prefix(v, vo)? },
            "to" => rule.to = if v == "all" { None } else { parse_prefix(v, vo)? },
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
}
