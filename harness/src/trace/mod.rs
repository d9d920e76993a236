//! Hop-by-hop explanation of a failed reachability check, from the kernel's own view.
//!
//! A trace ([`Opts::run`]) loads, in every node (with the real `nft`, one `nft -j -i` per node
//! for the whole trace: `nftsh.rs`), a table
//! `inet vpnlab_trace` whose base chains sit first (priority -500) and last (priority 500) on
//! each of the five IP hooks. Their only rules add the probe's ICMP packets to dynamic sets with
//! per-element counters: echo requests to `dest` and echo replies from `dest` keyed by
//! `ttl . interface . saddr . daddr`, and ICMP errors whose quoted packet is one of those keyed by
//! `ttl . interface . icmp type . icmp code` (nft 1.0.6 mishandles `typeof` concatenations of more
//! than four fields). No rule has a verdict and nothing needs conntrack, so the lab behaves as
//! before; the table is deleted again before the trace returns (also on error). The sets are
//! read once the probe is over, until three readings agree or one accounts for every packet of
//! the probe (`observe.rs`, `account.rs`).
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
use anyhow::{bail, Context, Result};
use std::cell::RefCell;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

mod account;
mod bridge;
mod explain;
mod kernel;
pub(crate) mod nflog;
mod nftsh;
mod observe;
mod ruleset;
mod walk;

use ruleset::Fam;
use walk::Walker;

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

/// Where and how to trace: every entry point is a method of it ([`Opts::ping`], [`Opts::run`],
/// [`Opts::run_probing`]), so a caller names each setting instead of lining up positions.
#[derive(Clone, Copy)]
pub struct Opts<'a, 'b> {
    /// The lab's nodes, all observed.
    pub nodes: &'a [TraceNode<'b>],
    pub pid: &'a PidNs,
    /// Where the trace's processes run (a node's directory).
    pub cwd: &'a Path,
    /// The probe's source node (index into `nodes`).
    pub src: usize,
    pub dest: IpAddr,
    /// How the hooks are observed; `None`: [`Method::for_this_kernel`].
    pub method: Option<Method>,
    /// Whether the kernel's drop events (`crate::drops`) name the drops; `None`: wherever the
    /// kernel gives them (decided once per process). Tests compare both methods without them.
    pub kernel_drops: Option<bool>,
}

impl TraceNode<'_> {
    /// Every namespace as a node named by its namespace's name.
    pub fn all<'b>(spaces: &[&'b NetNs]) -> Vec<TraceNode<'b>> {
        spaces.iter().map(|ns| TraceNode { name: &ns.name, netns: ns }).collect()
    }
}

impl Opts<'_, '_> {
    /// Installs per-node observation, runs `probe` (a closure that sends the traffic, e.g. the
    /// real ping of the failed check, re-run), collects, removes the observation, and explains.
    /// With the kernel's drop events, a drop names the kernel's interface, function and reason
    /// instead of the inferred cause.
    pub fn run(&self, probe: impl FnOnce() -> Result<()>) -> Result<Trace> {
        self.run_probing(|_| probe().map(|()| false))
    }

    /// [`Opts::run`] whose probe is handed the drop events while it runs (to stop once every
    /// probe is seen dropped) and says whether they accounted for every probe: then the
    /// observation points are read 20 ms apart instead of 50 ms, and a reading in which every
    /// packet of the probe has ended is the last one (`account.rs`).
    pub fn run_probing(&self, probe: impl FnOnce(Option<&RefCell<crate::drops::Watch>>) -> Result<bool>) -> Result<Trace> {
        let (nodes, dest) = (self.nodes, self.dest);
        if self.src >= nodes.len() {
            bail!("trace: source node index {} out of range ({} nodes)", self.src, nodes.len());
        }
        let method = self.method.unwrap_or_else(Method::for_this_kernel);
        let kernel_drops = self.kernel_drops.unwrap_or_else(|| crate::drops::available().is_ok());
        let fam = Fam { v6: dest.is_ipv6() };
        let t = Instant::now();
        // The drop locator loads (30 ms: BTF relocations, the verifier) while the observation
        // points are installed; the probe waits for it.
        let watch: RefCell<Option<crate::drops::Watch>> = RefCell::new(None);
        let (observed, drops) = std::thread::scope(|s| -> Result<_> {
            let loading = kernel_drops.then(|| {
                let spaces: Vec<&NetNs> = nodes.iter().map(|n| n.netns).collect();
                s.spawn(move || crate::drops::Watch::start(&spaces))
            });
            let probe = || -> Result<bool> {
                if let Some(l) = loading {
                    let w = l.join().map_err(|_| anyhow::anyhow!("loading the drop locator panicked"))??;
                    *watch.borrow_mut() = Some(w);
                }
                let w = watch.borrow_mut().take().map(RefCell::new);
                let r = probe(w.as_ref());
                *watch.borrow_mut() = w.map(RefCell::into_inner);
                r
            };
            // The drops so far (each reading of the points takes them first: `account.rs`).
            let events = || watch.borrow_mut().as_mut().map(|w| w.since(crate::drops::Mark::START).to_vec()).unwrap_or_default();
            // Once the points have settled: the drop events are taken and the drop locator is
            // unloaded (~20 ms: detaching the tracepoint) on a thread of its own while the
            // observation points are removed.
            let drops = RefCell::new(Vec::new());
            let release = || {
                if let Some(mut w) = watch.borrow_mut().take() {
                    *drops.borrow_mut() = w.since(crate::drops::Mark::START).to_vec();
                    s.spawn(move || {
                        let t = Instant::now();
                        drop(w);
                        if crate::config::get().trace_debug {
                            eprintln!("trace timing: unloading the drop locator {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
                        }
                    });
                }
            };
            let hooks = observe::Hooks { probe, events, release };
            let observed = match method {
                Method::Nft => observe::by_nft(self, fam, hooks)?,
                Method::Nflog => observe::by_nflog(self, fam, hooks)?,
            };
            Ok((observed, drops.into_inner()))
        })?;
        let observe::Observed { obs, before, after, probed } = observed;
        let debug = crate::config::get().trace_debug;
        probed.context("the probe of the trace failed")?;
        let mut drops = drops;
        let spaces: Vec<&NetNs> = nodes.iter().map(|n| n.netns).collect();
        crate::drops::name_devs(&mut drops, &spaces);
        if debug {
            for d in &drops {
                eprintln!("drop at {}: {} {:?}", nodes[d.node].name, d.describe(), d.packet);
            }
        }

        let (pid, cwd) = (self.pid, self.cwd);
        let mut w = Walker { nodes, pid, cwd, fam, dest, obs, before, after, lines: Vec::new(), end: TraceEnd::Other, drops };
        w.unbridge(); // bridged passes out (bridge.rs)
        w.explain(self.src);
        if debug {
            eprintln!("trace timing: the whole trace {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(Trace { lines: w.lines, end: w.end })
    }

    /// Traces a short real ping (`ping -c 2 -i 0.05 -W 0.3`) from the source node to `dest`: the
    /// runner's `trace` step, its automatic trace of a failed reachability check, and `vpnlab
    /// trace`. With drop events, the ping stops as soon as both probes are seen dropped in the
    /// lab instead of waiting out its -W 0.3.
    pub fn ping(&self) -> Result<Trace> {
        let dest = self.dest;
        let argv: Vec<String> =
            ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3"].iter().map(|s| s.to_string()).chain([dest.to_string()]).collect();
        let from = self.nodes.get(self.src).map(|n| n.netns);
        self.run_probing(|watch| {
            let mut lost = false;
            let mut decide = |slice: Duration| {
                let Some(w) = watch else { return false };
                lost = w.borrow_mut().wait(crate::drops::Mark::START, slice, |d| crate::probe::probes_lost(d, dest, 2, true)).is_some();
                lost
            };
            let from = from.context("trace: no source node")?;
            let cmd = crate::process::NodeCmd::new(from, self.pid, &argv, self.cwd);
            if watch.is_some() { cmd.capture_until(&mut decide) } else { cmd.capture() }?;
            Ok(lost)
        })
    }
}

/// How the trace observes the nodes' hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// An nftables inet table with counting sets (the kernel has `NF_TABLES_INET`).
    Nft,
    /// iptables rules with the NFLOG target, read from nfnetlink_log (Debian's user-mode-linux
    /// kernel, which has no nftables inet or ip family).
    Nflog,
}

impl Method {
    /// nft where the running kernel has the inet family (probed once per process), else NFLOG.
    pub fn for_this_kernel() -> Method {
        if crate::env::kernel_has(crate::model::KernelFeature::NftInet) {
            Method::Nft
        } else {
            Method::Nflog
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
