//! One-line steps (`client: ping 10.198.0.1 -> unreachable`), parsed and checked against the
//! lab's nodes and services. Offsets in errors are byte offsets into the step's text.

use super::route::{parse_addr, parse_route, parse_route_del, parse_rule, words, Route, Rule, SyntaxError};
use regex::Regex;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

mod capture;
mod service;
mod version;
pub use capture::shown as capture_shown;
use service::service_action;
pub use service::LogScope;
pub use version::{split_condition, version_number, VersionCond};

#[derive(Debug, Clone, PartialEq)]
pub enum PingExpect {
    Reachable,
    Unreachable,
    /// Loss between these percentages (inclusive).
    Loss(u32, u32),
}

/// What a TCP check expects. Connect checks: `open`, `refused` (a RST), `unreachable` (an ICMP
/// error), `stalls` (no answer). Transfers: `complete`, `stalls` (no progress until the
/// deadline), `closed` (the peer closed or reset the connection first), `refused`, `unreachable`.
#[derive(Debug, Clone, PartialEq)]
pub enum TcpExpect {
    Open,
    Refused,
    Unreachable,
    Closed,
    Complete,
    Stalls,
}

impl TcpExpect {
    pub fn word(&self) -> &'static str {
        match self {
            TcpExpect::Open => "open",
            TcpExpect::Refused => "refused",
            TcpExpect::Unreachable => "unreachable",
            TcpExpect::Closed => "closed",
            TcpExpect::Complete => "complete",
            TcpExpect::Stalls => "stalls",
        }
    }
}

/// `trace DEST -> delivered|dropped at NODE`: where the traced round trip must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExpect {
    Delivered,
    DroppedAt(String),
}

/// `impair IF off -> acted|idle`: did the impairment that ends act on any packet?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpairExpect {
    Acted,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceOp {
    Start,
    Stop,
    Restart,
}

/// How a `log`/`nolog` step matches: a regex (`/.../`) or a literal substring (`'...'`).
#[derive(Debug, Clone)]
pub struct LinePattern {
    pub re: Regex,
    pub text: String,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// `src`: `-I` with a source address or an interface name.
    /// `size`: `-s` payload bytes.
    Ping {
        node: usize,
        src: Option<String>,
        dest: IpAddr,
        count: u32,
        size: Option<u32>,
        expect: PingExpect,
    },
    RouteAdd {
        node: usize,
        route: Route,
    },
    RouteDel {
        node: usize,
        route: Route,
    },
    RuleAdd {
        node: usize,
        rule: Rule,
    },
    RuleDel {
        node: usize,
        rule: Rule,
    },
    Sh {
        node: usize,
        cmd: String,
        expect_fail: bool,
    },
    Chmod {
        node: usize,
        mode: u32,
        path: String,
    },
    Sysctl {
        node: usize,
        key: String,
        value: String,
    },
    Show {
        node: usize,
        cmd: String,
        /// `tty COMMAND`: run under a pseudo-terminal; the output is what the terminal shows.
        tty: bool,
    },
    /// Where a short ping from the node to `dest` goes, hop by hop (nft sets in every node).
    /// `-> delivered` / `-> dropped at NODE` judges where the round trip ended.
    Trace {
        node: usize,
        dest: IpAddr,
        expect: Option<TraceExpect>,
    },
    /// A kernel counter of the node by its nstat name, optionally compared (`-> > 0`).
    Counter {
        node: usize,
        name: String,
        expect: Option<(super::counter::CmpOp, i64)>,
    },
    Tcp {
        node: usize,
        dest: SocketAddr,
        send: Option<u64>,
        within: Duration,
        expect: TcpExpect,
    },
    /// NFQUEUE impairment of packets leaving `ifname`; `None` = `off`.
    Impair {
        node: usize,
        ifname: String,
        spec: Option<(crate::impair::Impairment, Option<crate::impair::Proto>, crate::impair::Family)>,
        expect: Option<ImpairExpect>,
    },
    Service {
        op: ServiceOp,
        service: usize,
    },
    /// Which lines are read: by default those logged since the last step that changed
    /// something began (`since start`: since the service started; `after`: since the previous
    /// step began).
    Log {
        service: usize,
        pattern: LinePattern,
        within: Duration,
        scope: LogScope,
    },
    NoLog {
        service: usize,
        pattern: LinePattern,
        watch: Option<Duration>,
        scope: LogScope,
    },
    /// `capture IF N ['FILTER'] [within D] [-> N packets|none]`: a real tcpdump in the node
    /// around the next step that is not a capture; `expect`: the number of packets it must see.
    Capture {
        node: usize,
        ifname: String,
        count: u32,
        filter: Option<String>,
        within: Duration,
        expect: Option<u32>,
    },
}

impl Action {
    /// Does this step change the lab (routes, firewall, files, services, impairments)? A
    /// `log` check reads, by default, only the lines logged since the last such step began.
    pub fn changes(&self) -> bool {
        !matches!(
            self,
            Action::Ping { .. }
                | Action::Show { .. }
                | Action::Trace { .. }
                | Action::Counter { .. }
                | Action::Tcp { .. }
                | Action::Log { .. }
                | Action::NoLog { .. }
                | Action::Capture { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub action: Action,
    /// `[openvpn >= 2.7] ...`: the step runs only when the daemon that runs is such a version.
    pub when: Option<VersionCond>,
    pub text: String,
    /// Byte offset of the step's string in the lab file.
    pub offset: usize,
}

/// Names the step parser resolves.
pub trait Names {
    fn node(&self, name: &str) -> Option<usize>;
    fn service(&self, name: &str) -> Option<usize>;
    fn node_names(&self) -> String;
    fn service_names(&self) -> String;
}

fn err(offset: usize, msg: impl Into<String>) -> SyntaxError {
    SyntaxError { offset, msg: msg.into() }
}

/// `5s`, `500ms`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    if !(v >= 0.0 && v.is_finite()) {
        return None;
    }
    Some(Duration::from_secs_f64(v * mult))
}

/// `100KB`, `64KiB`, `1MB`, `1500` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    for (suffix, mult) in [("kib", 1024u64), ("mib", 1 << 20), ("kb", 1000), ("mb", 1_000_000), ("k", 1000), ("b", 1)] {
        if let Some(n) = lower.strip_suffix(suffix) {
            return n.parse::<u64>().ok().map(|v| v * mult);
        }
    }
    lower.parse().ok()
}

pub fn parse_step(text: &str, names: &dyn Names) -> Result<Action, SyntaxError> {
    // The expectation, after the last " -> " (log patterns may contain "->" themselves).
    let first_word = text.split_whitespace().next().unwrap_or("");
    let takes_expectation = !matches!(first_word, "log" | "nolog");
    let (body, expect) = match text.rfind("->").filter(|_| takes_expectation) {
        Some(i) if !text[..i].ends_with('-') => (&text[..i], Some((i + 2, text[i + 2..].trim()))),
        _ => (text, None),
    };
    let w = words(body);
    let Some(&(o0, first)) = w.first() else {
        return Err(err(0, "empty step"));
    };
    if let Some(node_name) = first.strip_suffix(':') {
        let node = names.node(node_name).ok_or_else(|| err(o0, format!("unknown node `{node_name}` (nodes: {})", names.node_names())))?;
        let Some(&(o1, verb)) = w.get(1) else {
            return Err(err(o0, "nothing to do after the node name"));
        };
        let rest_at = o1 + verb.len();
        let rest = body[rest_at..].trim();
        return node_action(
            node,
            verb,
            o1,
            rest,
            rest_at + (body[rest_at..].len() - body[rest_at..].trim_start().len()),
            &w[2..],
            expect,
            names,
        );
    }
    service_action(first, o0, body, &w, expect, names)
}

#[allow(clippy::too_many_arguments)]
fn node_action(
    node: usize,
    verb: &str,
    verb_at: usize,
    rest: &str,
    rest_at: usize,
    args: &[(usize, &str)],
    expect: Option<(usize, &str)>,
    names: &dyn Names,
) -> Result<Action, SyntaxError> {
    let no_expect = |what: &str| -> Result<(), SyntaxError> {
        match expect {
            Some((o, _)) => Err(err(o, format!("`{what}` takes no `-> ...` expectation"))),
            None => Ok(()),
        }
    };
    match verb {
        "ping" => {
            let mut src = None;
            let mut src_addr = None;
            let mut size = None;
            let mut count = 2;
            let mut dest = None;
            let mut i = 0;
            while i < args.len() {
                let (o, a) = args[i];
                match a {
                    "-I" => {
                        let (vo, v) = *args.get(i + 1).ok_or_else(|| err(o, "-I wants a source address or an interface name"))?;
                        let is_ifname = !v.is_empty()
                            && v.len() <= 15
                            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                            && v.parse::<IpAddr>().is_err()
                            && !v.chars().all(|c| c.is_ascii_digit() || c == '.');
                        if !is_ifname {
                            src_addr = Some((vo, parse_addr(v, vo)?));
                        }
                        src = Some(v.to_string());
                        i += 1;
                    }
                    "-s" => {
                        let (vo, v) = *args.get(i + 1).ok_or_else(|| err(o, "-s wants a payload size in bytes"))?;
                        size =
                            Some(v.parse().ok().filter(|n: &u32| *n <= 65507).ok_or_else(|| err(vo, "-s wants a payload size 0..65507"))?);
                        i += 1;
                    }
                    "-c" => {
                        let (vo, v) = *args.get(i + 1).ok_or_else(|| err(o, "-c wants a count"))?;
                        count = v.parse().ok().filter(|c| *c > 0 && *c <= 1000).ok_or_else(|| err(vo, "-c wants a count 1..1000"))?;
                        i += 1;
                    }
                    _ if a.starts_with("-c") && a.len() > 2 => {
                        count = a[2..].parse().ok().filter(|c| *c > 0 && *c <= 1000).ok_or_else(|| err(o, "-c wants a count 1..1000"))?;
                    }
                    _ if dest.is_none() => dest = Some(parse_addr(a, o)?),
                    _ => return Err(err(o, format!("`{a}` is not understood (ping [-c N] [-s SIZE] [-I SRC|IF] DEST)"))),
                }
                i += 1;
            }
            let dest: IpAddr = dest.ok_or_else(|| err(verb_at, "ping wants a destination address"))?;
            if let Some((o, a)) = src_addr.filter(|(_, a): &(usize, IpAddr)| a.is_ipv6() != dest.is_ipv6()) {
                let fam = |a: IpAddr| if a.is_ipv6() { "IPv6" } else { "IPv4" };
                return Err(err(
                    o,
                    format!("`-I {a}` is an {} address but {dest} is {}: use a source of the same family", fam(a), fam(dest)),
                ));
            }
            let expect = match expect {
                None => PingExpect::Reachable,
                Some((_, "reachable")) => PingExpect::Reachable,
                Some((_, "unreachable")) => PingExpect::Unreachable,
                Some((o, e)) => {
                    let pct = |x: &str| x.trim().trim_end_matches('%').parse::<u32>().ok();
                    let range = e.strip_prefix("loss").map(str::trim).and_then(|r| match r.split_once("..") {
                        Some((a, b)) => Some((pct(a)?, pct(b)?)),
                        None => pct(r).map(|v| (v, v)),
                    });
                    match range {
                        Some((a, b)) if a <= b && b <= 100 => PingExpect::Loss(a, b),
                        _ => return Err(err(o, format!("`{e}`: expected `reachable`, `unreachable`, `loss N%` or `loss A%..B%`"))),
                    }
                }
            };
            Ok(Action::Ping { node, src, dest, count, size, expect })
        }
        "ip" => {
            let (o, obj) = *args.first().ok_or_else(|| err(verb_at, "`ip` wants `route` or `rule`"))?;
            let (o2, op) = *args.get(1).ok_or_else(|| err(o, "wants `add` or `del`"))?;
            no_expect("ip")?;
            let spec_at = o2 + op.len();
            let spec = &rest[spec_at - rest_at..];
            let shift = |e: SyntaxError| {
                let lead = spec.len() - spec.trim_start().len();
                err(spec_at + lead + e.offset, e.msg)
            };
            match (obj, op) {
                ("route", "add") => Ok(Action::RouteAdd { node, route: parse_route(spec.trim_start()).map_err(shift)? }),
                ("route", "del" | "delete") => Ok(Action::RouteDel { node, route: parse_route_del(spec.trim_start()).map_err(shift)? }),
                ("rule", "add") => Ok(Action::RuleAdd { node, rule: parse_rule(spec.trim_start()).map_err(shift)? }),
                ("rule", "del" | "delete") => Ok(Action::RuleDel { node, rule: parse_rule(spec.trim_start()).map_err(shift)? }),
                ("route" | "rule", _) => Err(err(o2, format!("`{op}`: use `add` or `del` (for anything else use `sh ip ...`)"))),
                _ => Err(err(o, format!("`ip {obj}`: only `ip route` and `ip rule` are native steps; use `sh ip {obj} ...`"))),
            }
        }
        "sh" => {
            if rest.is_empty() {
                return Err(err(verb_at, "`sh` wants a command"));
            }
            let expect_fail = match expect {
                None => false,
                Some((_, "fails")) => true,
                Some((_, "ok")) => false,
                Some((o, e)) => return Err(err(o, format!("`{e}`: expected `ok` or `fails`"))),
            };
            Ok(Action::Sh { node, cmd: rest.to_string(), expect_fail })
        }
        "show" => {
            no_expect("show")?;
            if rest.is_empty() {
                return Err(err(verb_at, "`show` wants a command, e.g. `show ip route`"));
            }
            Ok(Action::Show { node, cmd: rest.to_string(), tty: false })
        }
        "tty" => {
            no_expect("tty")?;
            if rest.is_empty() {
                return Err(err(verb_at, "`tty` wants a command, e.g. `tty ipsec auto --add myvpn`"));
            }
            Ok(Action::Show { node, cmd: rest.to_string(), tty: true })
        }
        "chmod" => {
            no_expect("chmod")?;
            let (mo, m) = *args.first().ok_or_else(|| err(verb_at, "chmod MODE PATH"))?;
            let mode = u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| err(mo, format!("`{m}` is not an octal mode like 755")))?;
            let (po, p) = *args.get(1).ok_or_else(|| err(mo, "chmod MODE PATH: the path is missing"))?;
            if p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(err(po, "the path must be relative to the node's directory"));
            }
            Ok(Action::Chmod { node, mode, path: p.to_string() })
        }
        "sysctl" => {
            no_expect("sysctl")?;
            let (ko, kv) = *args.iter().find(|(_, a)| *a != "-w").ok_or_else(|| err(verb_at, "sysctl KEY=VALUE"))?;
            let (k, v) = kv.split_once('=').ok_or_else(|| err(ko, "sysctl KEY=VALUE"))?;
            check_sysctl_key(k).map_err(|m| err(ko, m))?;
            Ok(Action::Sysctl { node, key: k.to_string(), value: v.to_string() })
        }
        "tcp" => {
            let (ao, a) = *args.first().ok_or_else(|| err(verb_at, "tcp DEST:PORT [send SIZE] [within DURATION]"))?;
            let dest: SocketAddr = a.parse().map_err(|_| err(ao, format!("`{a}` is not ADDRESS:PORT")))?;
            let mut send = None;
            let mut within = Duration::from_secs(5);
            let mut i = 1;
            while i < args.len() {
                let (o, word) = args[i];
                let (vo, v) = *args.get(i + 1).ok_or_else(|| err(o, format!("`{word}` wants a value")))?;
                match word {
                    "send" => {
                        send = Some(parse_size(v).filter(|n| *n > 0).ok_or_else(|| err(vo, format!("`{v}` is not a size like 100KB")))?)
                    }
                    "within" => within = parse_duration(v).ok_or_else(|| err(vo, format!("`{v}` is not a duration like 5s")))?,
                    _ => return Err(err(o, format!("`{word}` is not understood (send SIZE, within DURATION)"))),
                }
                i += 2;
            }
            let expect = match (expect, send.is_some()) {
                (None, false) | (Some((_, "open")), false) => TcpExpect::Open,
                (None, true) | (Some((_, "complete")), true) => TcpExpect::Complete,
                (Some((_, "refused")), _) => TcpExpect::Refused,
                (Some((_, "unreachable")), _) => TcpExpect::Unreachable,
                (Some((_, "stalls")), _) => TcpExpect::Stalls,
                (Some((_, "closed")), true) => TcpExpect::Closed,
                (Some((o, e)), false) => {
                    return Err(err(
                        o,
                        format!(
                            "`{e}`: a connect check expects `open`, `refused` (RST), `unreachable` (ICMP error) or `stalls` (no answer)"
                        ),
                    ))
                }
                (Some((o, e)), true) => {
                    return Err(err(
                        o,
                        format!("`{e}`: a transfer expects `complete`, `stalls`, `closed` (by the peer), `refused` or `unreachable`"),
                    ))
                }
            };
            Ok(Action::Tcp { node, dest, send, within, expect })
        }
        "counter" => {
            let (name, expect) = super::counter::parse(args, verb_at, expect)?;
            Ok(Action::Counter { node, name, expect })
        }
        "trace" => {
            let (o, d) = *args.first().ok_or_else(|| err(verb_at, "trace DEST"))?;
            if let Some((o2, _)) = args.get(1) {
                return Err(err(*o2, "trace DEST takes nothing more"));
            }
            let expect = match expect {
                None => None,
                Some((_, "delivered")) => Some(TraceExpect::Delivered),
                Some((o, e)) => match e.strip_prefix("dropped at ").map(str::trim) {
                    Some(n) if names.node(n).is_some() => Some(TraceExpect::DroppedAt(n.to_string())),
                    Some(n) => return Err(err(o, format!("unknown node `{n}` (nodes: {})", names.node_names()))),
                    None => return Err(err(o, format!("`{e}`: a trace expects `delivered` or `dropped at NODE`"))),
                },
            };
            Ok(Action::Trace { node, dest: parse_addr(d, o)?, expect })
        }
        "impair" => {
            let (io, ifname) = *args
                .first()
                .ok_or_else(|| err(verb_at, "impair IFNAME [ipv6] SPEC|off (e.g. `impair eth0 reorder every 10 hold 3 udp`)"))?;
            let spec_at = io + ifname.len();
            let spec_text = &rest[spec_at - rest_at..];
            let lead = spec_text.len() - spec_text.trim_start().len();
            let spec = if spec_text.trim() == "off" {
                None
            } else {
                Some(crate::impair::parse_spec(spec_text.trim_start()).map_err(|(o, m)| err(spec_at + lead + o, m))?)
            };
            let expect = match expect {
                None => None,
                Some((_, "acted")) if spec.is_none() => Some(ImpairExpect::Acted),
                Some((_, "idle")) if spec.is_none() => Some(ImpairExpect::Idle),
                Some((o, e)) => {
                    return Err(err(
                        o,
                        format!("`{e}`: only `impair IF off` takes an expectation: `-> acted` (it acted on a packet) or `-> idle`"),
                    ))
                }
            };
            Ok(Action::Impair { node, ifname: ifname.to_string(), spec, expect })
        }
        "capture" => capture::parse(node, verb_at, rest, rest_at, expect),
        _ => Err(err(
            verb_at,
            format!(
                "unknown step `{verb}` (node steps: ping, ip route|rule add|del, sh, show, tty, chmod, sysctl, tcp, trace, counter, impair, capture)"
            ),
        )),
    }
}

pub fn check_sysctl_key(k: &str) -> Result<(), String> {
    let ok = !k.is_empty() && k.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    if !ok {
        return Err(format!("`{k}` is not a sysctl name like net.ipv4.ip_forward"));
    }
    if !k.starts_with("net.") {
        return Err(format!("`{k}`: only per-namespace `net.*` sysctls can be set in a node (others would change the host)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
