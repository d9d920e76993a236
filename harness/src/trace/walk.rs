//! The walker: follows the probe's request, replies and ICMP errors hop by hop through the
//! observed sets (origin -> leave -> arrive, loops), writing one line per hop.

use super::explain::{clean_err, icmp_desc, show};
use super::ruleset::{base_chains, set_name, Counters, Elem, Fam, Hook, Kind, Obs, Pos, HOOKS};
use super::{TraceEnd, TraceNode, NFT_TIMEOUT, TABLE};
use crate::ns::PidNs;
use crate::process::run_capture;
use anyhow::Result;
use std::net::IpAddr;
use std::path::Path;

// ---------------------------------------------------------------- explaining

/// How one packet's journey ended.
#[derive(Debug, Clone)]
pub(super) enum End {
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
pub(super) enum Dir {
    Request,
    Reply,
    Error,
}

impl Dir {
    pub(super) fn label(self) -> &'static str {
        match self {
            Dir::Request => "request",
            Dir::Reply => "reply",
            Dir::Error => "error",
        }
    }
}

pub(super) struct Walker<'a, 'b> {
    pub(super) nodes: &'a [TraceNode<'b>],
    pub(super) pid: &'a PidNs,
    pub(super) cwd: &'a Path,
    pub(super) fam: Fam,
    pub(super) dest: IpAddr,
    pub(super) obs: Vec<Obs>,
    pub(super) before: Vec<Counters>,
    pub(super) after: Vec<Counters>,
    pub(super) lines: Vec<String>,
    pub(super) end: TraceEnd,
    /// The kernel's drop events during the probe (empty where it gives none).
    pub(super) drops: Vec<crate::drops::Drop>,
}

impl Walker<'_, '_> {
    pub(super) fn name(&self, n: usize) -> &str {
        self.nodes[n].name
    }

    pub(super) fn line(&mut self, dir: Dir, node: usize, text: &str) {
        let l = format!("{:<8}{}: {text}", dir.label(), self.name(node));
        self.lines.push(l);
    }

    pub(super) fn elems(&self, node: usize, h: Hook, p: Pos, k: Kind) -> &[Elem] {
        self.obs[node].sets.get(&set_name(h, p, k)).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Elements at a point with this TTL (and device, if given).
    pub(super) fn at(&self, node: usize, h: Hook, p: Pos, k: Kind, ttl: u8, dev: Option<&str>) -> Vec<Elem> {
        self.elems(node, h, p, k).iter().filter(|e| e.ttl == ttl && dev.is_none_or(|d| e.dev == d)).cloned().collect()
    }

    pub(super) fn sum(v: &[Elem]) -> u64 {
        v.iter().map(|e| e.packets).sum()
    }

    /// `" [IpExt InNoRoutes rose]"` for the counters that rose by at least `n` at `node`.
    pub(super) fn evidence(&self, node: usize, keys: &[&str], n: u64) -> String {
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

    pub(super) fn cmd(&self, node: usize, argv: &[String]) -> Result<String, String> {
        match run_capture(self.nodes[node].netns, self.pid, argv, self.cwd, NFT_TIMEOUT) {
            Ok(o) if o.success() => Ok(o.text.trim().to_string()),
            Ok(o) => Err(clean_err(&o.text)),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// `ip route get DEST [from SRC] [iif DEV]` in the node: the kernel's own routing decision.
    pub(super) fn route_get(&self, node: usize, to: IpAddr, from: Option<IpAddr>, iif: Option<&str>) -> Result<String, String> {
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

    pub(super) fn sysctl(&self, node: usize, key: &str) -> Option<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.nodes[node].netns.run(move || std::fs::read_to_string(path).ok()).ok().flatten().map(|s| s.trim().to_string())
    }

    /// The base chains other than ours on a hook of the node: `inet f fwd, policy drop`,
    /// `ip filter FORWARD, policy drop`. nftables' chains (iptables-nft's among them) come from
    /// `nft -j list chains` (serde_json); iptables-legacy's (the user-mode-linux guest's only iptables) from
    /// `iptables-legacy-save`, written the same way, so a lab's iptables firewall is named alike
    /// on both backends. Accept-policy chains of the raw, mangle and security tables are left
    /// out: that is where the NFLOG observation points live (and, with iptables-nft, where they
    /// leave empty chains behind), not where labs put their firewalls.
    pub(super) fn chains_on(&self, node: usize, h: Hook) -> String {
        let ours = |table: &str, policy: Option<&str>| {
            let t = table.split_whitespace().nth(1).unwrap_or("");
            matches!(t, "raw" | "mangle" | "security") && policy.is_none_or(|p| p.eq_ignore_ascii_case("accept"))
        };
        let mut found = Vec::new();
        let listed = self.cmd(node, &["nft".into(), "-j".into(), "list".into(), "chains".into()]);
        for c in listed.ok().and_then(|json| base_chains(&json).ok()).unwrap_or_default() {
            if c.hook != h.nft() || c.table == format!("inet {TABLE}") || ours(&c.table, c.policy.as_deref()) {
                continue;
            }
            found.push(match c.policy {
                Some(p) => format!("{} {}, policy {p}", c.table, c.name),
                None => format!("{} {}", c.table, c.name),
            });
        }
        let save = if self.fam.v6 { "ip6tables-legacy-save" } else { "iptables-legacy-save" };
        if crate::env::which(save).is_some() {
            if let Ok(text) = self.cmd(node, &[save.into()]) {
                for (table, chain, policy) in legacy_chains(&text, h) {
                    if !ours(&format!("{} {table}", self.fam.ip()), Some(&policy)) {
                        found.push(format!("{} {table} {chain}, policy {policy}", self.fam.ip()));
                    }
                }
            }
        }
        found.join("; ")
    }

    /// `was dropped in forward (...)` -> `was dropped in forward at r (...)`; otherwise the
    /// verdict with `-> dropped at r`.
    /// Ends a hop at `node`: its line gets ` -> <why> -> dropped at NODE`.
    /// `why` is asked only when the kernel did not say ([`Walker::kernel_why`]).
    pub(super) fn drop_here(&mut self, dir: Dir, k: Kind, node: usize, mut text: String, why: impl FnOnce(&Self) -> String) -> End {
        let why = self.kernel_why(node, k, why);
        text.push_str(&format!(" -> {}", self.dropped(&why, node)));
        self.line(dir, node, &text);
        End::Dropped { node, why }
    }

    pub(super) fn dropped(&self, why: &str, node: usize) -> String {
        let n = self.name(node);
        if let Some(said) = why.strip_prefix(super::kernel::KERNEL) {
            return format!("was dropped at {n}: {said}");
        }
        for h in HOOKS {
            let p = format!("was dropped in {}", h.nft());
            if let Some(rest) = why.strip_prefix(&p) {
                return format!("{p} at {n}{rest}");
            }
        }
        format!("{why} -> dropped at {n}")
    }

    pub(super) fn firewall(&self, node: usize, h: Hook) -> String {
        let c = self.chains_on(node, h);
        if c.is_empty() {
            format!("was dropped in {} (firewall?)", h.nft())
        } else {
            format!("was dropped in {} (firewall: {c})", h.nft())
        }
    }

    /// A note when fewer packets passed a point than reached the one before it.
    pub(super) fn partial(prev: u64, next: u64, h: Hook) -> String {
        if next > 0 && next < prev {
            format!(" (some were dropped in {})", h.nft())
        } else {
            String::new()
        }
    }

    /// Everything: request from the source, replies, ICMP errors, then the summary line.
    pub(super) fn explain(&mut self, src: usize) {
        let dest = self.dest;
        let origins = self.elems(src, Hook::Out, Pos::First, Kind::Req).to_vec();
        let mut req_ends = Vec::new();
        if origins.is_empty() {
            let why = self.kernel_why(src, Kind::Req, |w| match w.route_get(src, dest, None, None) {
                Err(e) if e.contains("unreachable") => format!("found no route ({e})"),
                Err(e) => format!("could not be routed ({e})"),
                Ok(_) => "was never sent (no echo request reached output)".to_string(),
            });
            let said = if why.starts_with(super::kernel::KERNEL) {
                self.dropped(&why, src)
            } else {
                format!("{why}{}", self.evidence(src, &["Ip.OutNoRoutes", "Ip6OutNoRoutes"], 1))
            };
            self.line(Dir::Request, src, &format!("to {dest}: {said} -> never left {}", self.name(src)));
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
                    let why = self.kernel_why(node, Kind::Rep, |w| w.no_reply_why(node, &e));
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
            (Some(End::Delivered { .. }), Some(End::Dropped { node, .. })) | (Some(End::Dropped { node, .. }), _) => {
                TraceEnd::DroppedAt(self.name(*node).to_string())
            }
            _ => TraceEnd::Other,
        };
    }

    /// A locally generated packet (element at output's first chain) from output onwards.
    pub(super) fn origin(&mut self, dir: Dir, k: Kind, node: usize, e: &Elem, path: &mut Vec<usize>) -> Vec<End> {
        let mut text = match k {
            Kind::Req | Kind::Rep => format!("out {} ({} -> {})", e.dev, show(e.saddr), show(e.daddr)),
            Kind::ErrReq | Kind::ErrRep => {
                format!(
                    "ICMP {} about the {}, out {}",
                    icmp_desc(&e.itype, &e.code),
                    if k == Kind::ErrReq { "request" } else { "reply" },
                    e.dev
                )
            }
        };
        let last = self.at(node, Hook::Out, Pos::Last, k, e.ttl, Some(&e.dev));
        if last.is_empty() {
            return vec![self.drop_here(dir, k, node, text, |w| w.firewall(node, Hook::Out))];
        }
        text.push_str(&Self::partial(e.packets, Self::sum(&last), Hook::Out));
        self.leave(dir, k, node, e.ttl, &e.dev, e.saddr, Self::sum(&last), text, path)
    }

    /// From postrouting's first chain at `node` (device `dev`, TTL `ttl`) to the next node.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn leave(
        &mut self,
        dir: Dir,
        k: Kind,
        node: usize,
        ttl: u8,
        dev: &str,
        saddr: Option<IpAddr>,
        prev: u64,
        mut text: String,
        path: &mut Vec<usize>,
    ) -> Vec<End> {
        let pf = self.at(node, Hook::Post, Pos::First, k, ttl, Some(dev));
        if pf.is_empty() {
            text.push_str(&format!(" -> vanished before postrouting at {}", self.name(node)));
            self.line(dir, node, &text);
            return vec![End::Dropped { node, why: "vanished before postrouting".into() }];
        }
        let pl = self.at(node, Hook::Post, Pos::Last, k, ttl, Some(dev));
        if pl.is_empty() {
            return vec![self.drop_here(dir, k, node, text, |w| w.firewall(node, Hook::Post))];
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
            if let Some(why) = self.no_arp_reply(node, dev, pl[0].saddr, pl[0].daddr) {
                return vec![self.drop_here(dir, k, node, text, |_| why)]; // bridge.rs
            }
            // The kernel may have said where: at this node (after postrouting: its neighbour)
            // or at another one before its prerouting (a wrong MAC, a bad header).
            if let Some(n) = self.kernel_drop_node(node, k) {
                if n == node {
                    return vec![self.drop_here(dir, k, node, text, |_| String::new())];
                }
                self.line(dir, node, &text);
                return vec![self.drop_here(dir, k, n, "in".into(), |_| String::new())];
            }
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

    /// A packet looping: report the loop once, then where its TTL ran out.
    pub(super) fn routing_loop(&mut self, dir: Dir, k: Kind, again: usize, path: &[usize]) -> End {
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
    pub(super) fn arrive(&mut self, dir: Dir, k: Kind, node: usize, e: &Elem, path: &mut Vec<usize>) -> Vec<End> {
        let mut text = format!("in {}", e.dev);
        let pl = self.at(node, Hook::Pre, Pos::Last, k, e.ttl, Some(&e.dev));
        if pl.is_empty() {
            return vec![self.drop_here(dir, k, node, text, |w| w.firewall(node, Hook::Pre))];
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
                return vec![self.drop_here(dir, k, node, text, |w| w.firewall(node, Hook::In))];
            }
            text.push_str(" -> delivered");
            text.push_str(&Self::partial(Self::sum(&inf), Self::sum(&inl), Hook::In));
            self.line(dir, node, &text);
            return vec![End::Delivered { node, e: inl[0].clone() }];
        }
        // Forwarded? (the TTL is one less from the forward hook on)
        let fwd = if e.ttl > 0 { self.at(node, Hook::Fwd, Pos::First, k, e.ttl - 1, None) } else { Vec::new() };
        if fwd.is_empty() {
            return vec![self.drop_here(dir, k, node, text, |w| w.not_routed_why(node, e, n_pre))];
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
                ends.push(self.drop_here(dir, k, node, t, |w| w.firewall(node, Hook::Fwd)));
                continue;
            }
            let mut t = format!("{text} -> forwarded out {dev}");
            t.push_str(&Self::partial(Self::sum(&ff), Self::sum(&fl), Hook::Fwd));
            ends.extend(self.leave(dir, k, node, e.ttl - 1, &dev, e.saddr, Self::sum(&fl), t, path));
        }
        ends
    }
}

/// The built-in chains of `iptables-legacy-save` output on hook `h` that hold a rule other than
/// the trace's own or a policy other than ACCEPT: (table, chain, policy in lower case).
pub(super) fn legacy_chains(text: &str, h: Hook) -> Vec<(String, String, String)> {
    let chain = match h {
        Hook::Pre => "PREROUTING",
        Hook::In => "INPUT",
        Hook::Fwd => "FORWARD",
        Hook::Out => "OUTPUT",
        Hook::Post => "POSTROUTING",
    };
    let mut out = Vec::new();
    let mut table = String::new();
    let mut policy: Option<String> = None;
    let mut rules = 0;
    let mut flush = |table: &str, policy: &mut Option<String>, rules: &mut usize| {
        if let Some(p) = policy.take() {
            if *rules > 0 || p != "ACCEPT" {
                out.push((table.to_string(), chain.to_string(), p.to_lowercase()));
            }
        }
        *rules = 0;
    };
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            flush(&table, &mut policy, &mut rules);
            table = t.trim().to_string();
        } else if let Some(r) = l.strip_prefix(&format!(":{chain} ")) {
            policy = r.split_whitespace().next().map(str::to_string);
        } else if l.starts_with(&format!("-A {chain} ")) && !l.contains("vpnlab_trace_") {
            rules += 1;
        }
    }
    flush(&table, &mut policy, &mut rules);
    out
}
