//! Hop-by-hop explanation of a failed reachability check, from the kernel's own view.
//!
//! [`trace`] loads, in every node (with the real `nft`, run inside the node), a table
//! `inet vpnlab_trace` whose base chains sit first (priority -500) and last (priority 500) on
//! each of the five IP hooks. Their only rules add the probe's ICMP packets to dynamic sets with
//! per-element counters: echo requests to `dest` and echo replies from `dest` keyed by
//! `ttl . interface . saddr . daddr`, and ICMP errors whose quoted packet is one of those keyed by
//! `ttl . interface . icmp type . icmp code` (nft 1.0.6 mishandles `typeof` concatenations of more
//! than four fields). No rule has a verdict and nothing needs conntrack, so the lab behaves as
//! before; the table is deleted again before `trace` returns (also on error).
//!
//! The TTL in the key orders the hops (every router decrements it before its forward hook; a
//! tunnel through a userspace VPN daemon leaves it alone) and tells apart passes of a looping
//! packet. A packet seen at a hook's first chain but not at its last one was dropped by a rule
//! on that hook (a firewall); one seen at prerouting but at neither input nor forward was
//! refused by the routing decision, which `ip route get ... iif ...` in that node then names
//! (no route, forwarding off, reverse-path filter); a locally generated packet (an echo reply)
//! that never reached output found no route (`ip route get` again). The per-namespace SNMP
//! counters (/proc/thread-self/net/snmp, .../netstat read from a thread inside the node) are
//! quoted only as supporting evidence, when they rose by at least the packets that the sets say
//! the probe put there (background traffic can only add to them).
//!
//! The lines carry no packet counts, so they do not depend on how many probes the closure sent.
//! `VPNLAB_TRACE_DEBUG=1` prints the ruleset, the raw sets and the SNMP deltas to stderr.

use crate::ns::{NetNs, PidNs};
use crate::process::run_capture;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// A node of the lab to observe.
pub struct TraceNode<'a> {
    pub name: &'a str,
    pub netns: &'a NetNs,
}

/// The explanation: one line per hop (`request r: in eth0 -> forwarded out eth1`), then a
/// summary line starting with `=> `.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub lines: Vec<String>,
    /// Where the probe's round trip ended, as data (a `trace DEST -> ...` step judges it).
    pub end: TraceEnd,
}

/// Where a traced round trip ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum TraceEnd {
    /// The reply came back to the source.
    Delivered,
    /// The request or its reply was dropped at this node (a reason the kernel gave).
    DroppedAt(String),
    /// Anything else (lost in a tunnel, looped, delivered elsewhere, nothing seen).
    Other,
}

const TABLE: &str = "vpnlab_trace";
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs per-node observation, runs `probe` (a closure that sends the traffic, e.g. the real
/// ping of the failed check, re-run), collects, removes the observation, and explains.
pub fn trace(nodes: &[TraceNode], pid: &PidNs, cwd: &Path, src_node: usize, dest: IpAddr, probe: impl FnOnce() -> Result<()>) -> Result<Trace> {
    if src_node >= nodes.len() {
        bail!("trace: source node index {src_node} out of range ({} nodes)", nodes.len());
    }
    let fam = Fam { v6: dest.is_ipv6() };
    let ruleset = ruleset(fam, dest);
    // `nft -f FILE` (as the runner loads rulesets): a temporary file in the node's directory, so
    // that even a killed run leaves it only inside its work dir (swept with it).
    let mut file = tempfile::Builder::new().prefix(".vpnlab-trace-").suffix(".nft").tempfile_in(cwd).context("creating the trace ruleset file")?;
    std::io::Write::write_all(&mut file, ruleset.as_bytes()).context("writing the trace ruleset file")?;
    let path = file.path().to_string_lossy().into_owned();
    let installed = Installed { nodes, pid, cwd, done: false };
    par(nodes, |n| {
        let out = nft(n.netns, pid, cwd, &["-f", path.as_str()])?;
        if !out.success() {
            let first: Vec<&str> = out.text.lines().take(3).collect();
            let hint = if out.text.contains("Operation not supported") { " (this kernel has no nftables inet family, like Debian's user-mode-linux kernel: trace needs the native backend)" } else { "" };
            bail!("node `{}`: loading the trace table failed ({}){hint}:\n{}", n.name, out.describe_status(), first.join("\n"));
        }
        Ok(())
    })?;
    let before = par(nodes, |n| snmp(n.netns))?;
    let probed = probe();
    // Let packets still in flight (a reply on its way back through a tunnel) land: collect until
    // three readings 50 ms apart agree (the sets only count the probe's ICMP, nothing else); on a
    // loaded machine a userspace VPN daemon can hold a packet for a while.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut texts = collect(nodes, pid, cwd)?;
    let mut agreeing = 0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let again = collect(nodes, pid, cwd)?;
        agreeing = if again == texts { agreeing + 1 } else { 0 };
        texts = again;
        if agreeing >= 2 || Instant::now() >= deadline {
            break;
        }
    }
    let after = par(nodes, |n| snmp(n.netns))?;
    if std::env::var_os("VPNLAB_TRACE_DEBUG").is_some() {
        debug_dump(nodes, &ruleset, &texts, &before, &after);
    }
    let obs: Vec<Obs> = texts.iter().map(|t| parse_sets(t)).collect();
    installed.remove()?;
    probed.context("the probe of the trace failed")?;

    let mut w = Walker { nodes, pid, cwd, fam, dest, obs, before, after, lines: Vec::new(), end: TraceEnd::Other };
    w.explain(src_node);
    Ok(Trace { lines: w.lines, end: w.end })
}

/// `VPNLAB_TRACE_DEBUG=1`: the ruleset, every node's sets and its SNMP deltas, on stderr.
fn debug_dump(nodes: &[TraceNode], ruleset: &str, texts: &[String], before: &[Counters], after: &[Counters]) {
    eprintln!("{ruleset}");
    for (i, n) in nodes.iter().enumerate() {
        let delta = |k: &String, v: &i64| v - before[i].get(k).copied().unwrap_or(0);
        let mut d: Vec<String> = after[i].iter().filter(|(k, v)| delta(k, v) != 0).map(|(k, v)| format!("{k}+{}", delta(k, v))).collect();
        d.sort();
        eprintln!("--- node {}\n{}\nsnmp: {}", n.name, texts[i], d.join(" "));
    }
}

// ---------------------------------------------------------------- observation points

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Hook {
    Pre,
    In,
    Fwd,
    Out,
    Post,
}

const HOOKS: [Hook; 5] = [Hook::Pre, Hook::In, Hook::Fwd, Hook::Out, Hook::Post];

impl Hook {
    fn short(self) -> &'static str {
        match self {
            Hook::Pre => "pre",
            Hook::In => "in",
            Hook::Fwd => "fwd",
            Hook::Out => "out",
            Hook::Post => "post",
        }
    }
    /// The nft hook name (also the word used in the explanation).
    fn nft(self) -> &'static str {
        match self {
            Hook::Pre => "prerouting",
            Hook::In => "input",
            Hook::Fwd => "forward",
            Hook::Out => "output",
            Hook::Post => "postrouting",
        }
    }
    /// The interface a packet is keyed by at this hook.
    fn dev(self) -> &'static str {
        match self {
            Hook::Pre | Hook::In => "iif",
            Hook::Fwd | Hook::Out | Hook::Post => "oif",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Pos {
    First,
    Last,
}

impl Pos {
    fn name(self) -> &'static str {
        match self {
            Pos::First => "first",
            Pos::Last => "last",
        }
    }
    fn priority(self) -> i32 {
        match self {
            Pos::First => -500,
            Pos::Last => 500,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// Echo request to `dest`.
    Req,
    /// Echo reply from `dest`.
    Rep,
    /// ICMP error quoting an echo request to `dest`.
    ErrReq,
    /// ICMP error quoting an echo reply from `dest`.
    ErrRep,
}

const KINDS: [Kind; 4] = [Kind::Req, Kind::Rep, Kind::ErrReq, Kind::ErrRep];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Req => "req",
            Kind::Rep => "rep",
            Kind::ErrReq => "ereq",
            Kind::ErrRep => "erep",
        }
    }
}

fn set_name(h: Hook, p: Pos, k: Kind) -> String {
    format!("{}_{}_{}", h.short(), p.name(), k.name())
}

/// Address-family specifics of the nft expressions.
#[derive(Clone, Copy)]
struct Fam {
    v6: bool,
}

impl Fam {
    fn ip(self) -> &'static str {
        if self.v6 {
            "ip6"
        } else {
            "ip"
        }
    }
    fn icmp(self) -> &'static str {
        if self.v6 {
            "icmpv6"
        } else {
            "icmp"
        }
    }
    fn ttl(self) -> &'static str {
        if self.v6 {
            "ip6 hoplimit"
        } else {
            "ip ttl"
        }
    }
    /// The key of a set (nft 1.0.6 handles at most four `typeof` fields in a concatenation):
    /// echo packets by both addresses, ICMP errors by what they say.
    fn key(self, k: Kind, dev: &str) -> String {
        let (ip, icmp) = (self.ip(), self.icmp());
        match k {
            Kind::Req | Kind::Rep => format!("{} . {dev} . {ip} saddr . {ip} daddr", self.ttl()),
            Kind::ErrReq | Kind::ErrRep => format!("{} . {dev} . {icmp} type . {icmp} code", self.ttl()),
        }
    }
    /// The match of one kind of packet of the probe.
    fn matcher(self, k: Kind, dest: IpAddr) -> String {
        let (ip, icmp) = (self.ip(), self.icmp());
        // Offsets into the ICMP header (@th) of the packet an ICMP error quotes.
        let hex: String = match dest {
            IpAddr::V4(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
            IpAddr::V6(a) => a.octets().iter().map(|b| format!("{b:02x}")).collect(),
        };
        let (errs, proto, saddr, daddr, itype, echo_req, echo_rep) = if self.v6 {
            ("destination-unreachable, packet-too-big, time-exceeded, parameter-problem", "@th,112,8 58", "@th,128,128", "@th,256,128", "@th,384,8", 128, 129)
        } else {
            ("destination-unreachable, time-exceeded, parameter-problem, redirect", "@th,136,8 1", "@th,160,32", "@th,192,32", "@th,224,8", 8, 0)
        };
        match k {
            Kind::Req => format!("{ip} daddr {dest} {icmp} type echo-request"),
            Kind::Rep => format!("{ip} saddr {dest} {icmp} type echo-reply"),
            Kind::ErrReq => format!("{icmp} type {{ {errs} }} {proto} {daddr} 0x{hex} {itype} {echo_req}"),
            Kind::ErrRep => format!("{icmp} type {{ {errs} }} {proto} {saddr} 0x{hex} {itype} {echo_rep}"),
        }
    }
    fn route_get(self) -> Vec<String> {
        let mut v = vec!["ip".to_string()];
        if self.v6 {
            v.push("-6".into());
        }
        v.extend(["route".into(), "get".into()]);
        v
    }
    fn sysctl_dir(self) -> &'static str {
        if self.v6 {
            "ipv6"
        } else {
            "ipv4"
        }
    }
}

/// The whole table, replacing any left over from an interrupted trace (one transaction).
fn ruleset(fam: Fam, dest: IpAddr) -> String {
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
            let _ = writeln!(s, "  chain {}_{} {{\n    type filter hook {} priority {}; policy accept;", h.short(), p.name(), h.nft(), p.priority());
            for k in KINDS {
                let _ = writeln!(s, "    {} add @{} {{ {} }}", fam.matcher(k, dest), set_name(h, p, k), fam.key(k, h.dev()));
            }
            s.push_str("  }\n");
        }
    }
    s.push_str("}\n");
    s
}

fn nft(ns: &NetNs, pid: &PidNs, cwd: &Path, args: &[&str]) -> Result<crate::process::Output> {
    let mut argv = vec!["nft".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    run_capture(ns, pid, &argv, cwd, NFT_TIMEOUT)
}

/// Runs `f` for every node at once (one thread each) and returns the results in node order.
fn par<T: Send>(nodes: &[TraceNode], f: impl Fn(&TraceNode) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| s.spawn(|| f(n))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("trace thread panicked")))).collect()
    })
}

fn collect(nodes: &[TraceNode], pid: &PidNs, cwd: &Path) -> Result<Vec<String>> {
    par(nodes, |n| {
        let out = nft(n.netns, pid, cwd, &["list", "table", "inet", TABLE])?;
        if !out.success() {
            bail!("node `{}`: reading the trace table failed ({}):\n{}", n.name, out.describe_status(), out.text.trim_end());
        }
        Ok(out.text)
    })
}

/// The trace tables, removed on drop if [`Installed::remove`] was not reached (error, panic).
struct Installed<'a, 'b> {
    nodes: &'a [TraceNode<'b>],
    pid: &'a PidNs,
    cwd: &'a Path,
    done: bool,
}

impl Installed<'_, '_> {
    fn remove(mut self) -> Result<()> {
        self.done = true;
        let r = par(self.nodes, |n| {
            let out = nft(n.netns, self.pid, self.cwd, &["delete", "table", "inet", TABLE])?;
            if !out.success() {
                bail!("node `{}`: removing the trace table failed ({}):\n{}", n.name, out.describe_status(), out.text.trim_end());
            }
            Ok(())
        });
        r.map(|_| ())
    }
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
struct Elem {
    ttl: u8,
    dev: String,
    /// Addresses are not recorded for ICMP errors (see [`Fam::key`]).
    saddr: Option<IpAddr>,
    daddr: Option<IpAddr>,
    /// nft's names, e.g. `destination-unreachable` / `net-unreachable` (ICMP errors only).
    itype: String,
    code: String,
    packets: u64,
}

#[derive(Debug, Default)]
struct Obs {
    sets: HashMap<String, Vec<Elem>>,
}

/// Parses `nft list table` output: `set NAME { ... elements = { K . K . K counter packets N bytes M, ... } }`.
fn parse_sets(text: &str) -> Obs {
    let mut obs = Obs::default();
    let mut cur: Option<String> = None;
    let mut buf: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(b) = buf.as_mut() {
            b.push(' ');
            b.push_str(t);
        } else if let Some(rest) = t.strip_prefix("set ") {
            cur = rest.split_whitespace().next().map(str::to_string);
            continue;
        } else if let Some(rest) = t.strip_prefix("elements = {") {
            buf = Some(rest.to_string());
        } else {
            continue;
        }
        let b = buf.as_ref().unwrap();
        if let Some(end) = b.find('}') {
            let body = b[..end].to_string();
            buf = None;
            if let Some(name) = &cur {
                let err = name.ends_with("_ereq") || name.ends_with("_erep");
                let v: Vec<Elem> = body.split(',').filter_map(|e| parse_elem(e, err)).collect();
                obs.sets.entry(name.clone()).or_default().extend(v);
            }
        }
    }
    obs
}

fn parse_elem(s: &str, err: bool) -> Option<Elem> {
    let s = s.trim();
    let (key, ctr) = s.split_once(" counter packets ")?;
    let packets = ctr.split_whitespace().next()?.parse().ok()?;
    let f: Vec<&str> = key.split(" . ").map(str::trim).collect();
    let (ttl, dev) = (f.first()?.parse().ok()?, f.get(1)?.trim_matches('"').to_string());
    if f.len() != 4 {
        return None;
    }
    if err {
        Some(Elem { ttl, dev, saddr: None, daddr: None, itype: f[2].to_string(), code: f[3].to_string(), packets })
    } else {
        Some(Elem { ttl, dev, saddr: Some(f[2].parse().ok()?), daddr: Some(f[3].parse().ok()?), itype: String::new(), code: String::new(), packets })
    }
}

// ---------------------------------------------------------------- SNMP counters

type Counters = HashMap<String, i64>;

/// The node's IP/ICMP counters (`IpExt.InNoRoutes`, `TcpExt.IPReversePathFilter`, `Ip6InNoRoutes`),
/// read on a thread inside the node (/proc/thread-self/net follows the thread's namespace).
fn snmp(ns: &NetNs) -> Result<Counters> {
    let texts = ns.run(|| ["snmp", "netstat", "snmp6"].map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default()))?;
    let mut m = Counters::new();
    for t in &texts[..2] {
        let lines: Vec<&str> = t.lines().collect();
        for pair in lines.chunks(2) {
            if let [names, values] = pair {
                let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else { continue };
                if p1 != p2 {
                    continue;
                }
                for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
                    if let Ok(x) = val.parse::<i64>() {
                        m.insert(format!("{p1}.{k}"), x);
                    }
                }
            }
        }
    }
    for l in texts[2].lines() {
        let mut w = l.split_whitespace();
        if let (Some(k), Some(v)) = (w.next(), w.next()) {
            if let Ok(x) = v.parse::<i64>() {
                m.insert(k.to_string(), x);
            }
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------- explaining

/// How one packet's journey ended.
#[derive(Debug, Clone)]
enum End {
    /// Reached the node's input (it was for that node).
    Delivered { node: usize, e: Elem },
    /// Dropped at `node`; `why` completes "its reply to X ..." / "it ...".
    Dropped { node: usize, why: String },
    /// Left `node` and arrived nowhere.
    Lost { node: usize, why: String },
    /// Went round between nodes (`path`) until its TTL ran out at `end`.
    Loop { path: Vec<usize>, end: Option<usize> },
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Request,
    Reply,
    Error,
}

impl Dir {
    fn label(self) -> &'static str {
        match self {
            Dir::Request => "request",
            Dir::Reply => "reply",
            Dir::Error => "error",
        }
    }
}

struct Walker<'a, 'b> {
    nodes: &'a [TraceNode<'b>],
    pid: &'a PidNs,
    cwd: &'a Path,
    fam: Fam,
    dest: IpAddr,
    obs: Vec<Obs>,
    before: Vec<Counters>,
    after: Vec<Counters>,
    lines: Vec<String>,
    end: TraceEnd,
}

impl Walker<'_, '_> {
    fn name(&self, n: usize) -> &str {
        self.nodes[n].name
    }

    fn line(&mut self, dir: Dir, node: usize, text: &str) {
        let l = format!("{:<8}{}: {text}", dir.label(), self.name(node));
        self.lines.push(l);
    }

    fn elems(&self, node: usize, h: Hook, p: Pos, k: Kind) -> &[Elem] {
        self.obs[node].sets.get(&set_name(h, p, k)).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Elements at a point with this TTL (and device, if given).
    fn at(&self, node: usize, h: Hook, p: Pos, k: Kind, ttl: u8, dev: Option<&str>) -> Vec<Elem> {
        self.elems(node, h, p, k).iter().filter(|e| e.ttl == ttl && dev.is_none_or(|d| e.dev == d)).cloned().collect()
    }

    fn sum(v: &[Elem]) -> u64 {
        v.iter().map(|e| e.packets).sum()
    }

    /// `" [IpExt InNoRoutes rose]"` for the counters that rose by at least `n` at `node`.
    fn evidence(&self, node: usize, keys: &[&str], n: u64) -> String {
        let rose: Vec<String> = keys
            .iter()
            // Only the probe's own family: background IPv6 (router solicitations, MLD) bumps the
            // Ip6 counters of an IPv4 probe's path by chance.
            .filter(|k| k.starts_with("Ip6") == self.fam.v6 || !k.starts_with("Ip"))
            .filter(|k| {
                let d = self.after[node].get(**k).copied().unwrap_or(0) - self.before[node].get(**k).copied().unwrap_or(0);
                d > 0 && d as u64 >= n.max(1)
            })
            .map(|k| k.replace('.', " "))
            .collect();
        if rose.is_empty() {
            String::new()
        } else {
            format!(" [{} rose]", rose.join(", "))
        }
    }

    fn cmd(&self, node: usize, argv: &[String]) -> Result<String, String> {
        match run_capture(self.nodes[node].netns, self.pid, argv, self.cwd, NFT_TIMEOUT) {
            Ok(o) if o.success() => Ok(o.text.trim().to_string()),
            Ok(o) => Err(clean_err(&o.text)),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// `ip route get DEST [from SRC] [iif DEV]` in the node: the kernel's own routing decision.
    fn route_get(&self, node: usize, to: IpAddr, from: Option<IpAddr>, iif: Option<&str>) -> Result<String, String> {
        let mut argv = self.fam.route_get();
        argv.push(to.to_string());
        if let Some(f) = from {
            argv.extend(["from".into(), f.to_string()]);
        }
        if let Some(i) = iif {
            argv.extend(["iif".into(), i.to_string()]);
        }
        self.cmd(node, &argv).map(|t| t.lines().next().unwrap_or("").trim().to_string())
    }

    fn sysctl(&self, node: usize, key: &str) -> Option<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.nodes[node].netns.run(move || std::fs::read_to_string(path).ok()).ok().flatten().map(|s| s.trim().to_string())
    }

    /// The base chains other than ours on a hook of the node: `inet f fwd (policy drop)`.
    fn chains_on(&self, node: usize, h: Hook) -> String {
        let Ok(text) = self.cmd(node, &["nft".into(), "list".into(), "chains".into()]) else { return String::new() };
        let (mut table, mut chain) = (String::new(), String::new());
        let mut found = Vec::new();
        for l in text.lines() {
            let t = l.trim();
            if let Some(r) = t.strip_prefix("table ") {
                table = r.trim_end_matches('{').trim().to_string();
            } else if let Some(r) = t.strip_prefix("chain ") {
                chain = r.trim_end_matches('{').trim().to_string();
            } else if t.contains(&format!("hook {} ", h.nft())) && table != format!("inet {TABLE}") {
                let policy = t.split("policy ").nth(1).map(|p| p.trim_end_matches(';').trim().to_string());
                found.push(match policy {
                    Some(p) => format!("{table} {chain}, policy {p}"),
                    None => format!("{table} {chain}"),
                });
            }
        }
        found.join("; ")
    }

    /// `was dropped in forward (...)` -> `was dropped in forward at r (...)`; otherwise the
    /// verdict with `-> dropped at r`.
    /// Ends a hop at `node`: its line gets ` -> <why> -> dropped at NODE`.
    fn drop_here(&mut self, dir: Dir, node: usize, mut text: String, why: String) -> End {
        text.push_str(&format!(" -> {}", self.dropped(&why, node)));
        self.line(dir, node, &text);
        End::Dropped { node, why }
    }

    fn dropped(&self, why: &str, node: usize) -> String {
        let n = self.name(node);
        for h in HOOKS {
            let p = format!("was dropped in {}", h.nft());
            if let Some(rest) = why.strip_prefix(&p) {
                return format!("{p} at {n}{rest}");
            }
        }
        format!("{why} -> dropped at {n}")
    }

    fn firewall(&self, node: usize, h: Hook) -> String {
        let c = self.chains_on(node, h);
        if c.is_empty() {
            format!("was dropped in {} (firewall?)", h.nft())
        } else {
            format!("was dropped in {} (firewall: {c})", h.nft())
        }
    }

    /// A note when fewer packets passed a point than reached the one before it.
    fn partial(prev: u64, next: u64, h: Hook) -> String {
        if next > 0 && next < prev {
            format!(" (some were dropped in {})", h.nft())
        } else {
            String::new()
        }
    }

    /// Everything: request from the source, replies, ICMP errors, then the summary line.
    fn explain(&mut self, src: usize) {
        let dest = self.dest;
        let origins = self.elems(src, Hook::Out, Pos::First, Kind::Req).to_vec();
        let mut req_ends = Vec::new();
        if origins.is_empty() {
            let why = match self.route_get(src, dest, None, None) {
                Err(e) if e.contains("unreachable") => format!("found no route ({e})"),
                Err(e) => format!("could not be routed ({e})"),
                Ok(_) => "was never sent (no echo request reached output)".to_string(),
            };
            let ev = self.evidence(src, &["Ip.OutNoRoutes", "Ip6OutNoRoutes"], 1);
            self.line(Dir::Request, src, &format!("to {dest}: {why}{ev} -> never left {}", self.name(src)));
            req_ends.push(End::Dropped { node: src, why });
        }
        for e in &origins {
            req_ends.extend(self.origin(Dir::Request, Kind::Req, src, e, &mut vec![src]));
        }
        let mut rep_ends = Vec::new();
        let mut reply_to: Option<IpAddr> = None;
        for end in &req_ends {
            if let End::Delivered { node, e } = end {
                let (node, e) = (*node, e.clone());
                if let Some(a) = e.saddr {
                    reply_to.get_or_insert(a);
                }
                let reps = self.elems(node, Hook::Out, Pos::First, Kind::Rep).to_vec();
                if reps.is_empty() {
                    let why = self.no_reply_why(node, &e);
                    self.line(Dir::Reply, node, &format!("to {}: {}", show(e.saddr), self.dropped(&why, node)));
                    rep_ends.push(End::Dropped { node, why });
                }
                for r in &reps {
                    rep_ends.extend(self.origin(Dir::Reply, Kind::Rep, node, r, &mut vec![node]));
                }
            }
        }
        // ICMP errors the kernel generated about the probe, wherever that happened.
        for node in 0..self.nodes.len() {
            for k in [Kind::ErrReq, Kind::ErrRep] {
                for e in self.elems(node, Hook::Out, Pos::First, k).to_vec() {
                    self.origin(Dir::Error, k, node, &e, &mut vec![node]);
                }
            }
        }
        let summary = self.summary(src, &req_ends, reply_to, &rep_ends);
        self.lines.push(format!("=> {summary}"));
        self.end = match (req_ends.first(), rep_ends.first()) {
            (Some(End::Delivered { .. }), Some(End::Delivered { node, .. })) if *node == src => TraceEnd::Delivered,
            (Some(End::Delivered { .. }), Some(End::Dropped { node, .. })) | (Some(End::Dropped { node, .. }), _) => TraceEnd::DroppedAt(self.name(*node).to_string()),
            _ => TraceEnd::Other,
        };
    }

    /// Why a node that received an echo request sent no reply.
    fn no_reply_why(&self, node: usize, e: &Elem) -> String {
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

    /// A locally generated packet (element at output's first chain) from output onwards.
    fn origin(&mut self, dir: Dir, k: Kind, node: usize, e: &Elem, path: &mut Vec<usize>) -> Vec<End> {
        let mut text = match k {
            Kind::Req | Kind::Rep => format!("out {} ({} -> {})", e.dev, show(e.saddr), show(e.daddr)),
            Kind::ErrReq | Kind::ErrRep => {
                format!("ICMP {} about the {}, out {}", icmp_desc(&e.itype, &e.code), if k == Kind::ErrReq { "request" } else { "reply" }, e.dev)
            }
        };
        let last = self.at(node, Hook::Out, Pos::Last, k, e.ttl, Some(&e.dev));
        if last.is_empty() {
            let why = self.firewall(node, Hook::Out);
            return vec![self.drop_here(dir, node, text, why)];
        }
        text.push_str(&Self::partial(e.packets, Self::sum(&last), Hook::Out));
        self.leave(dir, k, node, e.ttl, &e.dev, e.saddr, Self::sum(&last), text, path)
    }

    /// From postrouting's first chain at `node` (device `dev`, TTL `ttl`) to the next node.
    #[allow(clippy::too_many_arguments)]
    fn leave(&mut self, dir: Dir, k: Kind, node: usize, ttl: u8, dev: &str, saddr: Option<IpAddr>, prev: u64, mut text: String, path: &mut Vec<usize>) -> Vec<End> {
        let pf = self.at(node, Hook::Post, Pos::First, k, ttl, Some(dev));
        if pf.is_empty() {
            text.push_str(&format!(" -> vanished before postrouting at {}", self.name(node)));
            self.line(dir, node, &text);
            return vec![End::Dropped { node, why: "vanished before postrouting".into() }];
        }
        let pl = self.at(node, Hook::Post, Pos::Last, k, ttl, Some(dev));
        if pl.is_empty() {
            let why = self.firewall(node, Hook::Post);
            return vec![self.drop_here(dir, node, text, why)];
        }
        text.push_str(&Self::partial(prev.min(Self::sum(&pf)), Self::sum(&pl), Hook::Post));
        if let Some(p) = pl.iter().find(|p| p.saddr != saddr) {
            text.push_str(&format!(" (source NATed to {})", show(p.saddr)));
        }
        // Where did it arrive? Same TTL at a prerouting of another node (of this one for lo).
        let mut next: Vec<(usize, Elem)> = Vec::new();
        for n in 0..self.nodes.len() {
            if (n == node) != (dev == "lo") {
                continue;
            }
            for a in self.at(n, Hook::Pre, Pos::First, k, ttl, None) {
                next.push((n, a));
            }
        }
        if next.is_empty() {
            let why = self.lost_why(node, dev, pl[0].saddr, pl[0].daddr);
            text.push_str(&format!(" -> {why}"));
            self.line(dir, node, &text);
            return vec![End::Lost { node, why }];
        }
        self.line(dir, node, &text);
        let mut ends = Vec::new();
        for (n, a) in next {
            if path.contains(&n) && n != node {
                ends.push(self.routing_loop(dir, k, n, path));
                continue;
            }
            path.push(n);
            ends.extend(self.arrive(dir, k, n, &a, path));
            path.pop();
        }
        ends
    }

    /// Why a packet that left via `dev` arrived nowhere.
    fn lost_why(&self, node: usize, dev: &str, saddr: Option<IpAddr>, daddr: Option<IpAddr>) -> String {
        let link = self.cmd(node, &["ip".into(), "-d".into(), "-o".into(), "link".into(), "show".into(), "dev".into(), dev.into()]).unwrap_or_default();
        let tunnel = ["tun type tun", "tun type tap", "wireguard", "link/ppp", "xfrm", "vti", "gre", "ipip"].iter().find(|t| link.contains(*t));
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
        let hop = route.ok().and_then(|r| r.split_whitespace().skip_while(|w| *w != "via").nth(1).and_then(|g| g.parse::<IpAddr>().ok())).unwrap_or(daddr);
        let neigh = self.cmd(node, &["ip".into(), "neigh".into(), "show".into(), hop.to_string(), "dev".into(), dev.into()]).unwrap_or_default();
        // FAILED or INCOMPLETE depending on timing: the same verdict.
        if neigh.contains("FAILED") || neigh.contains("INCOMPLETE") || neigh.trim().is_empty() && dev != "lo" {
            return format!("left via {dev} towards {hop}, which did not answer {}", if self.fam.v6 { "neighbour discovery" } else { "ARP" });
        }
        format!("left via {dev} towards {hop} and was seen arriving at no node")
    }

    /// A packet looping: report the loop once, then where its TTL ran out.
    fn routing_loop(&mut self, dir: Dir, k: Kind, again: usize, path: &[usize]) -> End {
        let start = path.iter().position(|n| *n == again).unwrap_or(0);
        let mut cycle: Vec<usize> = path[start..].to_vec();
        cycle.push(again);
        let names: Vec<&str> = cycle.iter().map(|n| self.name(*n)).collect();
        let text = format!("arrives again: routing loop {}", names.join(" -> "));
        self.line(dir, again, &text);
        // The lowest TTL seen at any prerouting: where the loop ended.
        let mut low: Option<(u8, usize)> = None;
        for n in 0..self.nodes.len() {
            for e in self.elems(n, Hook::Pre, Pos::First, k) {
                if low.is_none_or(|(t, _)| e.ttl < t) {
                    low = Some((e.ttl, n));
                }
            }
        }
        if let Some((t, n)) = low {
            self.line(dir, n, &format!("in with TTL {t} -> TTL exceeded, dropped at {}", self.name(n)));
        }
        End::Loop { path: cycle, end: low.map(|(_, n)| n) }
    }

    /// A packet seen at prerouting's first chain of `node`.
    fn arrive(&mut self, dir: Dir, k: Kind, node: usize, e: &Elem, path: &mut Vec<usize>) -> Vec<End> {
        let mut text = format!("in {}", e.dev);
        let pl = self.at(node, Hook::Pre, Pos::Last, k, e.ttl, Some(&e.dev));
        if pl.is_empty() {
            let why = self.firewall(node, Hook::Pre);
            return vec![self.drop_here(dir, node, text, why)];
        }
        text.push_str(&Self::partial(e.packets, Self::sum(&pl), Hook::Pre));
        let n_pre = Self::sum(&pl);
        // Local delivery?
        let inf = self.at(node, Hook::In, Pos::First, k, e.ttl, Some(&e.dev));
        if !inf.is_empty() {
            if let Some(d) = inf.iter().find(|i| i.daddr != e.daddr) {
                text.push_str(&format!(" (destination NATed to {})", show(d.daddr)));
            }
            let inl = self.at(node, Hook::In, Pos::Last, k, e.ttl, Some(&e.dev));
            if inl.is_empty() {
                let why = self.firewall(node, Hook::In);
                return vec![self.drop_here(dir, node, text, why)];
            }
            text.push_str(" -> delivered");
            text.push_str(&Self::partial(Self::sum(&inf), Self::sum(&inl), Hook::In));
            self.line(dir, node, &text);
            return vec![End::Delivered { node, e: inl[0].clone() }];
        }
        // Forwarded? (the TTL is one less from the forward hook on)
        let fwd = if e.ttl > 0 { self.at(node, Hook::Fwd, Pos::First, k, e.ttl - 1, None) } else { Vec::new() };
        if fwd.is_empty() {
            let why = self.not_routed_why(node, e, n_pre);
            return vec![self.drop_here(dir, node, text, why)];
        }
        if let Some(d) = fwd.iter().find(|f| f.daddr != e.daddr) {
            text.push_str(&format!(" (destination NATed to {})", show(d.daddr)));
        }
        let mut devs: Vec<String> = fwd.iter().map(|f| f.dev.clone()).collect();
        devs.sort();
        devs.dedup();
        let mut ends = Vec::new();
        for dev in devs {
            let t = format!("{text} -> routed out {dev}");
            let ff = self.at(node, Hook::Fwd, Pos::First, k, e.ttl - 1, Some(&dev));
            let fl = self.at(node, Hook::Fwd, Pos::Last, k, e.ttl - 1, Some(&dev));
            if fl.is_empty() {
                let why = self.firewall(node, Hook::Fwd);
                ends.push(self.drop_here(dir, node, t, why));
                continue;
            }
            let mut t = format!("{text} -> forwarded out {dev}");
            t.push_str(&Self::partial(Self::sum(&ff), Self::sum(&fl), Hook::Fwd));
            ends.extend(self.leave(dir, k, node, e.ttl - 1, &dev, e.saddr, Self::sum(&fl), t, path));
        }
        ends
    }

    /// Why the routing decision of `node` neither delivered nor forwarded a packet.
    fn not_routed_why(&self, node: usize, e: &Elem, n: u64) -> String {
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
    fn summary(&self, src: usize, req: &[End], reply_to: Option<IpAddr>, rep: &[End]) -> String {
        let dest = self.dest;
        let Some(first) = req.first() else { return format!("echo request to {dest}: nothing seen") };
        match first {
            End::Delivered { node, .. } => {
                let to = reply_to.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
                let head = format!("echo request reached {} ({dest}); its reply to {to}", self.name(*node));
                // "its reply to X found no route to X" says X once.
                let once = |why: &str| strip_evidence(why).replace(&format!("no route to {to} "), "no route ");
                match rep.first() {
                    Some(End::Delivered { node: r, .. }) if *r == src => format!("echo request delivered to {} ({dest}); reply delivered back to {}", self.name(*node), self.name(src)),
                    Some(End::Delivered { node: r, .. }) => format!("{head} was delivered to {} instead of {}", self.name(*r), self.name(src)),
                    Some(End::Dropped { node: r, why }) => format!("{head} {}", self.dropped(&once(why), *r)),
                    Some(End::Lost { node: r, why, .. }) => format!("{head} {}", self.lost(why, *r)),
                    Some(End::Loop { path, end }) => format!("{head} looped ({}) until its TTL ran out{}", self.names(path), self.at_node(*end)),
                    None => format!("{head}: nothing seen"),
                }
            }
            End::Dropped { node, why } if *node == src => format!("echo request to {dest} {} -> never left {}", strip_evidence(why), self.name(src)),
            End::Dropped { node, why } => format!("echo request to {dest} reached {}; it {}", self.name(*node), self.dropped(&strip_evidence(why), *node)),
            End::Lost { node, why, .. } => format!("echo request to {dest} {}", self.lost(why, *node)),
            End::Loop { path, end } => format!("echo request to {dest} looped ({}) until its TTL ran out{}", self.names(path), self.at_node(*end)),
        }
    }

    /// `left via eth1 ...` -> `left r via eth1 ...`; `entered tun0 ...` -> `entered tun0 at r ...`.
    fn lost(&self, why: &str, node: usize) -> String {
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

    fn at_node(&self, n: Option<usize>) -> String {
        n.map(|n| format!(" at {}", self.name(n))).unwrap_or_default()
    }

    fn names(&self, path: &[usize]) -> String {
        path.iter().map(|n| self.name(*n)).collect::<Vec<_>>().join(" -> ")
    }
}

fn show(a: Option<IpAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

/// `RTNETLINK answers: Network is unreachable` -> `Network is unreachable`.
fn clean_err(text: &str) -> String {
    let t = text.trim();
    let t = t.lines().next().unwrap_or("").trim();
    t.trim_start_matches("RTNETLINK answers:").trim_start_matches("Error:").trim().to_string()
}

/// The summary quotes verdicts without the counter evidence.
fn strip_evidence(why: &str) -> String {
    match why.find(" [") {
        Some(i) if why.ends_with(" rose]") => why[..i].to_string(),
        _ => why.to_string(),
    }
}

fn icmp_desc(itype: &str, code: &str) -> String {
    match itype {
        "destination-unreachable" => format!("destination-unreachable ({code})"),
        "time-exceeded" => "time-exceeded".into(),
        "redirect" => "redirect".into(),
        t => t.to_string(),
    }
}

/// Traces a short real ping (`ping -c 2 -i 0.05 -W 0.3`) from `spaces[src]` to `dest`: the
/// runner's `trace` step, its automatic trace of a failed reachability check, and `vpnlab trace`.
pub fn run_ping_trace(spaces: &[NetNs], pid: &PidNs, cwd: &Path, src: usize, dest: IpAddr) -> Result<Vec<String>> {
    run_ping_trace_refs(&spaces.iter().collect::<Vec<_>>(), pid, cwd, src, dest)
}

pub fn run_ping_trace_refs(spaces: &[&NetNs], pid: &PidNs, cwd: &Path, src: usize, dest: IpAddr) -> Result<Vec<String>> {
    run_ping_trace_full(spaces, pid, cwd, src, dest).map(|t| t.lines)
}

/// [`run_ping_trace_refs`] with where the round trip ended.
pub fn run_ping_trace_full(spaces: &[&NetNs], pid: &PidNs, cwd: &Path, src: usize, dest: IpAddr) -> Result<Trace> {
    let nodes: Vec<TraceNode> = spaces.iter().map(|ns| TraceNode { name: &ns.name, netns: ns }).collect();
    let argv: Vec<String> = ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3"].iter().map(|s| s.to_string()).chain([dest.to_string()]).collect();
    let t = trace(&nodes, pid, cwd, src, dest, || {
        crate::process::run_capture(spaces[src], pid, &argv, cwd, std::time::Duration::from_secs(10))?;
        Ok(())
    })?;
    Ok(t)
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    #[test]
    fn parses_set_listing() {
        let text = r#"table inet vpnlab_trace {
	set pre_first_req {
		typeof ip ttl . iif . ip saddr . ip daddr
		size 65535
		flags dynamic
		counter
		elements = { 64 . "eth0" . 10.0.1.2 . 10.0.2.2 counter packets 2 bytes 168,
			     63 . "tun0" . 10.0.1.2 . 10.0.2.2 counter packets 1 bytes 84 }
	}
	set pre_last_req {
		typeof ip ttl . iif . ip daddr . icmp type . icmp code
		flags dynamic
		counter
	}
}"#;
        let o = parse_sets(text);
        let v = &o.sets["pre_first_req"];
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].ttl, v[0].dev.as_str(), v[0].packets), (64, "eth0", 2));
        assert_eq!((v[1].ttl, v[1].dev.as_str(), v[1].packets), (63, "tun0", 1));
        assert!(!o.sets.contains_key("pre_last_req"));
    }

    /// a - r - b; `{A}`, `{R}`, `{B}` are more keys of the nodes, `{A_ADDRS}` extra addresses of
    /// a:eth0.
    const CHAIN: &str = r#"
[lab]
title = "trace"
[nodes.a]
routes = ["default via 10.0.1.1"]
{A}
[nodes.r]
{R}
[nodes.b]
{B}
[[links]]
a = "a:eth0 10.0.1.2/24{A_ADDRS}"
b = "r:eth0 10.0.1.1/24"
[[links]]
a = "r:eth1 10.0.2.1/24"
b = "b:eth0 10.0.2.2/24"
[scenarios.s]
steps = []
"#;

    const FORWARDING: &str = "sysctl = { \"net.ipv4.ip_forward\" = \"1\" }";
    const B_ROUTE: &str = "routes = [\"default via 10.0.2.1\"]";

    fn chain(r: &str, b: &str, a_addrs: &str) -> String {
        CHAIN.replace("{R}", r).replace("{B}", b).replace("{A_ADDRS}", a_addrs).replace("{A}", if a_addrs.is_empty() { "" } else { "sysctl = { \"net.ipv4.conf.all.arp_announce\" = \"2\" }" })
    }

    /// Builds the lab, runs `ping -c 2 -W 0.3 [ping_args] dest` in node 0 under the trace,
    /// checks that nothing of the trace is left, and returns its lines.
    fn run(lab_src: &str, dest: &str, ping_args: &[&str]) -> Option<Vec<String>> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: building namespaces needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let lab = crate::model::parse(&dir.path().join("lab.toml"), lab_src).unwrap_or_else(|e| panic!("{e:?}"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pid = PidNs::create().unwrap();
        let topo = rt.block_on(Topology::build(&lab)).unwrap();
        for (i, n) in lab.nodes.iter().enumerate() {
            if let Some(rules) = &n.nft {
                let f = dir.path().join(format!("{}.nft", n.name));
                std::fs::write(&f, rules).unwrap();
                let out = nft(&topo.nodes[i].ns, &pid, dir.path(), &["-f", &f.to_string_lossy()]).unwrap();
                assert!(out.success(), "{}", out.text);
            }
        }
        let nodes: Vec<TraceNode> = lab.nodes.iter().zip(&topo.nodes).map(|(n, h)| TraceNode { name: &n.name, netns: &h.ns }).collect();
        let t = trace(&nodes, &pid, dir.path(), 0, dest.parse().unwrap(), || {
            let mut argv: Vec<String> = ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3"].iter().map(|s| s.to_string()).collect();
            argv.extend(ping_args.iter().map(|s| s.to_string()));
            argv.push(dest.to_string());
            run_capture(&topo.nodes[0].ns, &pid, &argv, dir.path(), Duration::from_secs(10))?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        for n in &nodes {
            let out = nft(n.netns, &pid, dir.path(), &["list", "tables"]).unwrap();
            assert!(!out.text.contains(TABLE), "{}: {}", n.name, out.text);
        }
        for l in &t.lines {
            eprintln!("{l}");
        }
        Some(t.lines)
    }

    #[test]
    fn trace_no_route_back() {
        let Some(lines) = run(&chain(FORWARDING, "", ""), "10.0.2.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
                "request r: in eth0 -> forwarded out eth1",
                "request b: in eth0 -> delivered",
                "reply   b: to 10.0.1.2: found no route (Network is unreachable) -> dropped at b",
                "=> echo request reached b (10.0.2.2); its reply to 10.0.1.2 found no route (Network is unreachable) -> dropped at b",
            ]
        );
    }

    #[test]
    fn trace_forward_firewall() {
        let r = format!("{FORWARDING}\nnft = \"\"\"\ntable inet f {{\n  chain fw {{ type filter hook forward priority 0; policy drop; }}\n}}\n\"\"\"");
        let Some(lines) = run(&chain(&r, B_ROUTE, ""), "10.0.2.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
                "request r: in eth0 -> routed out eth1 -> was dropped in forward at r (firewall: inet f fw, policy drop)",
                "=> echo request to 10.0.2.2 reached r; it was dropped in forward at r (firewall: inet f fw, policy drop)",
            ]
        );
    }

    #[test]
    fn trace_forwarding_off() {
        let r = "sysctl = { \"net.ipv4.ip_forward\" = \"0\" }";
        let Some(lines) = run(&chain(r, B_ROUTE, ""), "10.0.2.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
                "request r: in eth0 -> was not forwarded: forwarding is off (net.ipv4.conf.eth0.forwarding=0) [Ip InAddrErrors rose] -> dropped at r",
                "=> echo request to 10.0.2.2 reached r; it was not forwarded: forwarding is off (net.ipv4.conf.eth0.forwarding=0) -> dropped at r",
            ]
        );
    }

    #[test]
    fn trace_working() {
        let Some(lines) = run(&chain(FORWARDING, B_ROUTE, ""), "10.0.2.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
                "request r: in eth0 -> forwarded out eth1",
                "request b: in eth0 -> delivered",
                "reply   b: out eth0 (10.0.2.2 -> 10.0.1.2)",
                "reply   r: in eth1 -> forwarded out eth0",
                "reply   a: in eth0 -> delivered",
                "=> echo request delivered to b (10.0.2.2); reply delivered back to a",
            ]
        );
    }

    /// r has no route to the destination: it drops the request and tells a so (ICMP).
    #[test]
    fn trace_no_route_at_router() {
        let Some(lines) = run(&chain(FORWARDING, B_ROUTE, ""), "10.9.9.9", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.9.9.9)",
                "request r: in eth0 -> found no route to 10.9.9.9 (Network is unreachable) [IpExt InNoRoutes rose] -> dropped at r",
                "error   r: ICMP destination-unreachable (net-unreachable) about the request, out eth0",
                "error   a: in eth0 -> delivered",
                "=> echo request to 10.9.9.9 reached r; it found no route to 10.9.9.9 (Network is unreachable) -> dropped at r",
            ]
        );
    }

    /// A source r has no route back to fails r's strict reverse-path filter.
    #[test]
    fn trace_reverse_path_filter() {
        let r = "sysctl = { \"net.ipv4.ip_forward\" = \"1\", \"net.ipv4.conf.all.rp_filter\" = \"1\" }";
        let Some(lines) = run(&chain(r, B_ROUTE, " 10.5.0.2/24"), "10.0.2.2", &["-I", "10.5.0.2"]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.5.0.2 -> 10.0.2.2)",
                "request r: in eth0 -> failed the reverse-path filter (no route back to 10.5.0.2 via eth0; rp_filter) [TcpExt IPReversePathFilter rose] -> dropped at r",
                "=> echo request to 10.0.2.2 reached r; it failed the reverse-path filter (no route back to 10.5.0.2 via eth0; rp_filter) -> dropped at r",
            ]
        );
    }

    /// The source itself has no route: nothing leaves it.
    #[test]
    fn trace_no_route_at_source() {
        let src = chain(FORWARDING, B_ROUTE, "").replace("routes = [\"default via 10.0.1.1\"]", "");
        let Some(lines) = run(&src, "10.0.2.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: to 10.0.2.2: found no route (Network is unreachable) [Ip OutNoRoutes rose] -> never left a",
                "=> echo request to 10.0.2.2 found no route (Network is unreachable) -> never left a",
            ]
        );
    }

    /// The book's lab with real OpenVPN: the probe enters tun0 on the client, leaves tun0 on the
    /// server, and the LAN gateway has no route back to the VPN (then: masquerading fixes it).
    #[test]
    fn trace_openvpn_missing_return_route() {
        use crate::process::{wait_until, Daemon};
        use std::os::unix::fs::PermissionsExt;
        if unsafe { libc::geteuid() } != 0 || crate::env::which("openvpn").is_none() {
            eprintln!("skipped: needs root and openvpn");
            return;
        }
        let lab_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/missing-return-route");
        let lab = crate::model::load(&lab_dir).unwrap_or_else(|e| panic!("{e:?}"));
        let work = crate::workdir::WorkDir::new("trace-test").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pid = PidNs::create().unwrap();
        let topo = rt.block_on(Topology::build(&lab)).unwrap();
        let pki = work.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        crate::pki::generate(lab.pki.as_ref().unwrap(), &pki).unwrap();
        for n in &lab.nodes {
            let d = work.node_dir(&n.name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            for f in &n.files {
                std::fs::copy(lab.dir.join(&f.rel), d.join(&f.rel)).unwrap();
            }
            for e in std::fs::read_dir(&pki).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
            }
        }
        let mut daemons = Vec::new();
        for s in &lab.services {
            let log = work.log(&s.name);
            let d = Daemon::start(&s.name, &topo.nodes[s.node].ns, &pid, &s.argv, &work.node_dir(&lab.nodes[s.node].name), &log, &[]).unwrap();
            let re = s.ready.clone().unwrap();
            let ok = wait_until(Instant::now() + Duration::from_secs(15), || crate::process::read_from(&log, 0).lines().any(|l| re.is_match(l)).then_some(()));
            assert!(ok.is_some(), "{} not ready:\n{}", s.name, d.tail(20));
            daemons.push(d);
        }
        let idx = |n: &str| lab.node_index(n).unwrap();
        let nodes: Vec<TraceNode> = lab.nodes.iter().zip(&topo.nodes).map(|(n, h)| TraceNode { name: &n.name, netns: &h.ns }).collect();
        let client = idx("client");
        let cwd = work.node_dir("client");
        let go_from = |src: usize, dest: &str| -> Vec<String> {
            let t = trace(&nodes, &pid, &cwd, src, dest.parse().unwrap(), || {
                let argv: Vec<String> = ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3", dest].iter().map(|s| s.to_string()).collect();
                run_capture(&topo.nodes[src].ns, &pid, &argv, &cwd, Duration::from_secs(10))?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
            for l in &t.lines {
                eprintln!("{l}");
            }
            t.lines
        };
        let go = |dest: &str| go_from(client, dest);
        let gw = go("10.198.0.1");
        // An address of the VPN subnet that no client has: the server's OpenVPN drops it.
        let nobody = go_from(idx("server"), "10.200.0.77");
        let lanhost = go("10.198.1.12");
        // Without its upstream, the gateway's own reply finds no route at all.
        let out = run_capture(&topo.nodes[idx("gateway")].ns, &pid, &["ip".into(), "route".into(), "del".into(), "default".into()], &cwd, Duration::from_secs(10)).unwrap();
        assert!(out.success(), "{}", out.text);
        let gw_no_upstream = go("10.198.0.1");
        let out = run_capture(
            &topo.nodes[idx("server")].ns,
            &pid,
            &["iptables".into(), "-t".into(), "nat".into(), "-A".into(), "POSTROUTING".into(), "-o".into(), "eth1".into(), "-j".into(), "MASQUERADE".into()],
            &cwd,
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.success(), "{}", out.text);
        let fixed = go("10.198.0.1");
        for d in &mut daemons {
            let _ = d.stop(Duration::from_secs(2));
        }
        assert_eq!(
            gw,
            [
                "request client: out tun0 (10.200.0.2 -> 10.198.0.1)",
                "request server: in tun0 -> forwarded out eth1",
                "request gateway: in eth0 -> delivered",
                "reply   gateway: out eth1 (10.198.0.1 -> 10.200.0.2)",
                "reply   upstream: in eth0 -> found no route to 10.200.0.2 (Network is unreachable) [IpExt InNoRoutes rose] -> dropped at upstream",
                "error   upstream: ICMP destination-unreachable (net-unreachable) about the reply, out eth0",
                "error   gateway: in eth1 -> delivered",
                "=> echo request reached gateway (10.198.0.1); its reply to 10.200.0.2 found no route (Network is unreachable) -> dropped at upstream",
            ]
        );
        assert_eq!(
            lanhost,
            [
                "request client: out tun0 (10.200.0.2 -> 10.198.1.12)",
                "request server: in tun0 -> forwarded out eth1",
                "request lanhost: in eth0 -> delivered",
                "reply   lanhost: out eth0 (10.198.1.12 -> 10.200.0.2)",
                "reply   gateway: in eth0 -> forwarded out eth1",
                "reply   upstream: in eth0 -> found no route to 10.200.0.2 (Network is unreachable) [IpExt InNoRoutes rose] -> dropped at upstream",
                "error   upstream: ICMP destination-unreachable (net-unreachable) about the reply, out eth0",
                "error   gateway: in eth1 -> forwarded out eth0",
                "error   lanhost: in eth0 -> delivered",
                "=> echo request reached lanhost (10.198.1.12); its reply to 10.200.0.2 found no route (Network is unreachable) -> dropped at upstream",
            ]
        );
        assert_eq!(
            gw_no_upstream,
            [
                "request client: out tun0 (10.200.0.2 -> 10.198.0.1)",
                "request server: in tun0 -> forwarded out eth1",
                "request gateway: in eth0 -> delivered",
                "reply   gateway: to 10.200.0.2: found no route (Network is unreachable) -> dropped at gateway",
                "=> echo request reached gateway (10.198.0.1); its reply to 10.200.0.2 found no route (Network is unreachable) -> dropped at gateway",
            ]
        );
        assert_eq!(
            nobody,
            [
                "request server: out tun0 (10.200.0.1 -> 10.200.0.77) -> entered tun0 (a tunnel served by a userspace daemon) and came out at no node: the VPN daemon did not deliver it to 10.200.0.77",
                "=> echo request to 10.200.0.77 entered tun0 at server (a tunnel served by a userspace daemon) and came out at no node: the VPN daemon did not deliver it to 10.200.0.77",
            ]
        );
        assert_eq!(
            fixed,
            [
                "request client: out tun0 (10.200.0.2 -> 10.198.0.1)",
                "request server: in tun0 -> forwarded out eth1 (source NATed to 10.198.0.10)",
                "request gateway: in eth0 -> delivered",
                "reply   gateway: out eth0 (10.198.0.1 -> 10.198.0.10)",
                "reply   server: in eth1 (destination NATed to 10.200.0.2) -> forwarded out tun0",
                "reply   client: in tun0 -> delivered",
                "=> echo request delivered to gateway (10.198.0.1); reply delivered back to client",
            ]
        );
    }

    /// Nobody answers ARP for the destination on r's LAN side.
    #[test]
    fn trace_no_arp_answer() {
        let Some(lines) = run(&chain(FORWARDING, B_ROUTE, ""), "10.0.2.99", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.0.2.99)",
                "request r: in eth0 -> forwarded out eth1 -> left via eth1 towards 10.0.2.99, which did not answer ARP",
                "=> echo request to 10.0.2.99 left r via eth1 towards 10.0.2.99, which did not answer ARP",
            ]
        );
    }

    /// A node's own address: through lo and back.
    #[test]
    fn trace_own_address() {
        let Some(lines) = run(&chain(FORWARDING, B_ROUTE, ""), "10.0.1.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out lo (10.0.1.2 -> 10.0.1.2)",
                "request a: in lo -> delivered",
                "reply   a: out lo (10.0.1.2 -> 10.0.1.2)",
                "reply   a: in lo -> delivered",
                "=> echo request delivered to a (10.0.1.2); reply delivered back to a",
            ]
        );
    }

    /// r routes 10.7.0.0/24 to b, whose default route points back at r.
    #[test]
    fn trace_routing_loop() {
        let r = format!("{FORWARDING}\nroutes = [\"10.7.0.0/24 via 10.0.2.2\"]");
        let b = format!("{FORWARDING}\n{B_ROUTE}");
        let Some(lines) = run(&chain(&r, &b, ""), "10.7.0.1", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.7.0.1)",
                "request r: in eth0 -> forwarded out eth1",
                "request b: in eth0 -> forwarded out eth0",
                "request r: arrives again: routing loop r -> b -> r",
                "request b: in with TTL 1 -> TTL exceeded, dropped at b",
                "error   b: ICMP time-exceeded about the request, out eth0",
                "error   r: in eth1 -> forwarded out eth0",
                "error   a: in eth0 -> delivered",
                "=> echo request to 10.7.0.1 looped (r -> b -> r) until its TTL ran out at b",
            ]
        );
    }

    /// b's input hook drops echo requests (a rule, not the policy).
    #[test]
    fn trace_input_firewall() {
        let b = format!("{B_ROUTE}\nnft = \"\"\"\ntable inet f {{\n  chain i {{ type filter hook input priority 0; icmp type echo-request drop; }}\n}}\n\"\"\"");
        let Some(lines) = run(&chain(FORWARDING, &b, ""), "10.0.2.2", &[]) else { return };
        assert_eq!(
            lines,
            [
                "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
                "request r: in eth0 -> forwarded out eth1",
                "request b: in eth0 -> was dropped in input at b (firewall: inet f i, policy accept)",
                "=> echo request to 10.0.2.2 reached b; it was dropped in input at b (firewall: inet f i, policy accept)",
            ]
        );
    }
}
