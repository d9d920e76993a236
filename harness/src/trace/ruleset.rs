//! The observation points: the `inet vpnlab_trace` ruleset (hooks, first/last chains, the
//! kinds of counted packet; loaded, read and removed through `nftsh.rs`), its removal by an
//! `nft` process per node when a trace ends early, reading the sets back from `nft -j` JSON
//! (serde_json), and the per-namespace SNMP counters.

use super::{TraceNode, NFT_TIMEOUT, TABLE};
use crate::ns::{NetNs, PidNs};
use crate::process::run_capture;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

// ---------------------------------------------------------------- observation points

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Hook {
    Pre,
    In,
    Fwd,
    Out,
    Post,
}

pub(super) const HOOKS: [Hook; 5] = [Hook::Pre, Hook::In, Hook::Fwd, Hook::Out, Hook::Post];

impl Hook {
    pub(super) fn short(self) -> &'static str {
        match self {
            Hook::Pre => "pre",
            Hook::In => "in",
            Hook::Fwd => "fwd",
            Hook::Out => "out",
            Hook::Post => "post",
        }
    }
    /// The nft hook name (also the word used in the explanation).
    pub(super) fn nft(self) -> &'static str {
        match self {
            Hook::Pre => "prerouting",
            Hook::In => "input",
            Hook::Fwd => "forward",
            Hook::Out => "output",
            Hook::Post => "postrouting",
        }
    }
    /// The interface a packet is keyed by at this hook.
    pub(super) fn dev(self) -> &'static str {
        match self {
            Hook::Pre | Hook::In => "iif",
            Hook::Fwd | Hook::Out | Hook::Post => "oif",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Pos {
    First,
    Last,
}

impl Pos {
    pub(super) fn name(self) -> &'static str {
        match self {
            Pos::First => "first",
            Pos::Last => "last",
        }
    }
    pub(super) fn priority(self) -> i32 {
        match self {
            Pos::First => -500,
            Pos::Last => 500,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Kind {
    /// Echo request to `dest`.
    Req,
    /// Echo reply from `dest`.
    Rep,
    /// ICMP error quoting an echo request to `dest`.
    ErrReq,
    /// ICMP error quoting an echo reply from `dest`.
    ErrRep,
}

pub(super) const KINDS: [Kind; 4] = [Kind::Req, Kind::Rep, Kind::ErrReq, Kind::ErrRep];

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Req => "req",
            Kind::Rep => "rep",
            Kind::ErrReq => "ereq",
            Kind::ErrRep => "erep",
        }
    }
}

pub(super) fn set_name(h: Hook, p: Pos, k: Kind) -> String {
    format!("{}_{}_{}", h.short(), p.name(), k.name())
}

/// Address-family specifics of the nft expressions.
#[derive(Clone, Copy)]
pub(super) struct Fam {
    pub(super) v6: bool,
}

impl Fam {
    pub(super) fn ip(self) -> &'static str {
        if self.v6 {
            "ip6"
        } else {
            "ip"
        }
    }
    pub(super) fn icmp(self) -> &'static str {
        if self.v6 {
            "icmpv6"
        } else {
            "icmp"
        }
    }
    pub(super) fn ttl(self) -> &'static str {
        if self.v6 {
            "ip6 hoplimit"
        } else {
            "ip ttl"
        }
    }
    /// The key of a set (nft 1.0.6 handles at most four `typeof` fields in a concatenation):
    /// echo packets by both addresses, ICMP errors by what they say.
    pub(super) fn key(self, k: Kind, dev: &str) -> String {
        let (ip, icmp) = (self.ip(), self.icmp());
        match k {
            Kind::Req | Kind::Rep => format!("{} . {dev} . {ip} saddr . {ip} daddr", self.ttl()),
            Kind::ErrReq | Kind::ErrRep => format!("{} . {dev} . {icmp} type . {icmp} code", self.ttl()),
        }
    }
    /// The match of one kind of packet of the probe.
    pub(super) fn matcher(self, k: Kind, dest: IpAddr) -> String {
        let (ip, icmp) = (self.ip(), self.icmp());
        // Offsets into the ICMP header (@th) of the packet an ICMP error quotes.
        let hex: String = match dest {
            IpAddr::V4(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
            IpAddr::V6(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
        };
        let (errs, proto, saddr, daddr, itype, echo_req, echo_rep) = if self.v6 {
            (
                "destination-unreachable, packet-too-big, time-exceeded, parameter-problem",
                "@th,112,8 58",
                "@th,128,128",
                "@th,256,128",
                "@th,384,8",
                128,
                129,
            )
        } else {
            (
                "destination-unreachable, time-exceeded, parameter-problem, redirect",
                "@th,136,8 1",
                "@th,160,32",
                "@th,192,32",
                "@th,224,8",
                8,
                0,
            )
        };
        match k {
            Kind::Req => format!("{ip} daddr {dest} {icmp} type echo-request"),
            Kind::Rep => format!("{ip} saddr {dest} {icmp} type echo-reply"),
            Kind::ErrReq => format!("{icmp} type {{ {errs} }} {proto} {daddr} 0x{hex} {itype} {echo_req}"),
            Kind::ErrRep => format!("{icmp} type {{ {errs} }} {proto} {saddr} 0x{hex} {itype} {echo_rep}"),
        }
    }
    pub(super) fn route_get(self) -> Vec<String> {
        let mut v = vec!["ip".to_string()];
        if self.v6 {
            v.push("-6".into());
        }
        v.extend(["route".into(), "get".into()]);
        v
    }
    pub(super) fn sysctl_dir(self) -> &'static str {
        if self.v6 {
            "ipv6"
        } else {
            "ipv4"
        }
    }
}

/// The whole table, replacing any left over from an interrupted trace (one transaction).
pub(super) fn ruleset(fam: Fam, dest: IpAddr) -> String {
    let mut s = format!("add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for h in HOOKS {
        for p in [Pos::First, Pos::Last] {
            for k in KINDS {
                let _ = writeln!(s, "  set {} {{ typeof {}; flags dynamic; counter; }}", set_name(h, p, k), fam.key(k, "iif"));
            }
        }
    }
    for h in HOOKS {
        for p in [Pos::First, Pos::Last] {
            let _ = writeln!(
                s,
                "  chain {}_{} {{\n    type filter hook {} priority {}; policy accept;",
                h.short(),
                p.name(),
                h.nft(),
                p.priority()
            );
            for k in KINDS {
                let _ = writeln!(s, "    {} add @{} {{ {} }}", fam.matcher(k, dest), set_name(h, p, k), fam.key(k, h.dev()));
            }
            s.push_str("  }\n");
        }
    }
    s.push_str("}\n");
    s
}

pub(super) fn nft(ns: &NetNs, pid: &PidNs, cwd: &Path, args: &[&str]) -> Result<crate::process::Output> {
    let mut argv = vec!["nft".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    run_capture(ns, pid, &argv, cwd, NFT_TIMEOUT)
}

/// Runs `f` for every node at once (one thread each) and returns the results in node order.
pub(super) fn par<T: Send>(nodes: &[TraceNode], f: impl Fn(&TraceNode) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| s.spawn(|| f(n))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("trace thread panicked")))).collect()
    })
}

/// The trace tables, removed on drop (an `nft` process per node) unless `done` (the trace's
/// `nft -i` shells removed them: `nftsh.rs`), so an error or a panic leaves no table behind.
pub(super) struct Installed<'a, 'b> {
    pub(super) nodes: &'a [TraceNode<'b>],
    pub(super) pid: &'a PidNs,
    pub(super) cwd: &'a Path,
    pub(super) done: bool,
}

impl Drop for Installed<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = par(self.nodes, |n| nft(n.netns, self.pid, self.cwd, &["delete", "table", "inet", TABLE]).map(|_| ()));
        }
    }
}

// ---------------------------------------------------------------- reading the sets

/// One element of a set: packets of one kind seen with this key at one point.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Elem {
    pub(super) ttl: u8,
    pub(super) dev: String,
    /// Addresses are not recorded for ICMP errors (see [`Fam::key`]).
    pub(super) saddr: Option<IpAddr>,
    pub(super) daddr: Option<IpAddr>,
    /// nft's names, e.g. `destination-unreachable` / `net-unreachable` (ICMP errors only).
    pub(super) itype: String,
    pub(super) code: String,
    pub(super) packets: u64,
}

#[derive(Debug, Default)]
pub(super) struct Obs {
    pub(super) sets: HashMap<String, Vec<Elem>>,
}

/// `nft -j list ...` output (nft's JSON schema, libnftables-json(5)): a list of objects, each
/// one key naming its kind; only sets and chains are read here, everything else is skipped.
#[derive(Deserialize)]
pub(super) struct Listing {
    nftables: Vec<Object>,
}

#[derive(Deserialize)]
struct Object {
    set: Option<SetJson>,
    chain: Option<ChainJson>,
}

#[derive(Deserialize)]
struct SetJson {
    name: String,
    /// The table the set is in (`nft list sets` gives every table's sets).
    #[serde(default)]
    table: Option<String>,
    /// Each `{"elem": {"val": {"concat": [...]}, "counter": {...}}}` for our counting sets; kept
    /// as values so that an element of another shape is skipped, not an error.
    #[serde(default)]
    elem: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct ElemJson {
    elem: ElemInner,
}

#[derive(Deserialize)]
struct ElemInner {
    val: Concat,
    counter: CounterJson,
}

#[derive(Deserialize)]
struct Concat {
    concat: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct CounterJson {
    packets: u64,
}

#[derive(Deserialize)]
struct ChainJson {
    family: String,
    table: String,
    name: String,
    /// Base chains only.
    hook: Option<String>,
    policy: Option<String>,
}

/// A base chain from `nft -j list chains`: `table` is `FAMILY NAME` (`ip filter`).
pub(super) struct BaseChain {
    pub(super) table: String,
    pub(super) name: String,
    pub(super) hook: String,
    pub(super) policy: Option<String>,
}

/// The base chains of `nft -j list chains` output, in its order.
pub(super) fn base_chains(json: &str) -> Result<Vec<BaseChain>> {
    let l: Listing = serde_json::from_str(json).context("reading `nft -j list chains`")?;
    Ok(l.nftables
        .into_iter()
        .filter_map(|o| o.chain)
        .filter_map(|c| Some(BaseChain { table: format!("{} {}", c.family, c.table), name: c.name, hook: c.hook?, policy: c.policy }))
        .collect())
}

/// Reads the counting sets back from `nft -j list sets` output (elements keyed `TTL . DEV .
/// SADDR . DADDR`, or `TTL . DEV . TYPE . CODE` for the ICMP-error sets, each with its counter);
/// the sets of other tables are skipped, and a listing without any set of the trace table (it
/// was deleted meanwhile) is an error.
pub(super) fn parse_sets(json: &str) -> Result<Obs> {
    let l: Listing = serde_json::from_str(json).context("reading `nft -j list sets`")?;
    let ours: Vec<SetJson> =
        l.nftables.into_iter().filter_map(|o| o.set).filter(|s| s.table.as_deref().is_none_or(|t| t == TABLE)).collect();
    if ours.is_empty() {
        bail!("the trace table `inet {TABLE}` is gone (removed while the trace ran?)");
    }
    let mut obs = Obs::default();
    for set in ours {
        let err = set.name.ends_with("_ereq") || set.name.ends_with("_erep");
        let v: Vec<Elem> = set.elem.into_iter().filter_map(|e| parse_elem(e, err)).collect();
        if !v.is_empty() {
            obs.sets.entry(set.name).or_default().extend(v);
        }
    }
    Ok(obs)
}

fn parse_elem(e: serde_json::Value, err: bool) -> Option<Elem> {
    let e: ElemJson = serde_json::from_value(e).ok()?;
    // A field as text: nft gives names (`"eth0"`, `"net-unreachable"`) or numbers.
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let f = &e.elem.val.concat;
    if f.len() != 4 {
        return None;
    }
    let (ttl, dev) = (u8::try_from(f[0].as_u64()?).ok()?, text(&f[1])?);
    let packets = e.elem.counter.packets;
    if err {
        Some(Elem { ttl, dev, saddr: None, daddr: None, itype: text(&f[2])?, code: text(&f[3])?, packets })
    } else {
        let addr = |v: &serde_json::Value| v.as_str()?.parse().ok();
        Some(Elem { ttl, dev, saddr: Some(addr(&f[2])?), daddr: Some(addr(&f[3])?), itype: String::new(), code: String::new(), packets })
    }
}

// ---------------------------------------------------------------- SNMP counters

pub(super) type Counters = HashMap<String, i64>;

/// The node's IP/ICMP counters (`IpExt.InNoRoutes`, `TcpExt.IPReversePathFilter`, `Ip6InNoRoutes`),
/// read on a thread inside the node (/proc/thread-self/net follows the thread's namespace).
pub(super) fn snmp(ns: &NetNs) -> Result<Counters> {
    // xfrm_stat's names are kept too; the trace only looks up the ones it knows.
    Ok(crate::counters::read_with(ns, ".")?.into_iter().collect())
}
