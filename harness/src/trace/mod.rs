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
use anyhow::{bail, Context, Result};
use std::cell::RefCell;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

mod bridge;
mod explain;
mod kernel;
pub(crate) mod nflog;
mod ruleset;
mod walk;

use ruleset::{collect, nft, par, parse_sets, ruleset, snmp, Counters, Fam, Installed, Obs};
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

/// Installs per-node observation, runs `probe` (a closure that sends the traffic, e.g. the real
/// ping of the failed check, re-run), collects, removes the observation, and explains. Where
/// the kernel gives drop events (`crate::drops`, decided once per process), a drop names the
/// kernel's interface, function and reason instead of the inferred cause.
pub fn trace(
    nodes: &[TraceNode],
    pid: &PidNs,
    cwd: &Path,
    src_node: usize,
    dest: IpAddr,
    probe: impl FnOnce() -> Result<()>,
) -> Result<Trace> {
    trace_with(Method::for_this_kernel(), crate::drops::available().is_ok(), nodes, pid, cwd, src_node, dest, probe)
}

/// [`trace`] with the observation method chosen by the caller and no drop events (tests run
/// both methods and compare them).
pub fn trace_by(
    method: Method,
    nodes: &[TraceNode],
    pid: &PidNs,
    cwd: &Path,
    src_node: usize,
    dest: IpAddr,
    probe: impl FnOnce() -> Result<()>,
) -> Result<Trace> {
    trace_with(method, false, nodes, pid, cwd, src_node, dest, probe)
}

/// [`trace_by`], with the kernel's drop events (`kernel_drops`) or without.
#[allow(clippy::too_many_arguments)]
pub fn trace_with(
    method: Method,
    kernel_drops: bool,
    nodes: &[TraceNode],
    pid: &PidNs,
    cwd: &Path,
    src_node: usize,
    dest: IpAddr,
    probe: impl FnOnce() -> Result<()>,
) -> Result<Trace> {
    trace_probing(method, kernel_drops, nodes, pid, cwd, src_node, dest, |_| probe().map(|()| false))
}

/// [`trace_with`] whose probe is handed the drop events while it runs (to stop once every
/// probe is seen dropped) and says whether they accounted for every probe: then nothing but
/// ICMP errors can still be in flight, and the observation points are read 20 ms apart
/// instead of 50 ms until they agree.
#[allow(clippy::too_many_arguments)]
pub fn trace_probing(
    method: Method,
    kernel_drops: bool,
    nodes: &[TraceNode],
    pid: &PidNs,
    cwd: &Path,
    src_node: usize,
    dest: IpAddr,
    probe: impl FnOnce(Option<&RefCell<crate::drops::Watch>>) -> Result<bool>,
) -> Result<Trace> {
    if src_node >= nodes.len() {
        bail!("trace: source node index {src_node} out of range ({} nodes)", nodes.len());
    }
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
        let observed = match method {
            Method::Nft => observe_nft(nodes, pid, cwd, fam, dest, probe, release)?,
            Method::Nflog => observe_nflog(nodes, pid, cwd, fam, dest, probe, release)?,
        };
        Ok((observed, drops.into_inner()))
    })?;
    let (obs, before, after, probed) = observed;
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

    let mut w = Walker { nodes, pid, cwd, fam, dest, obs, before, after, lines: Vec::new(), end: TraceEnd::Other, drops };
    w.unbridge(); // bridged passes out (bridge.rs)
    w.explain(src_node);
    if debug {
        eprintln!("trace timing: the whole trace {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Trace { lines: w.lines, end: w.end })
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

type Observed = (Vec<Obs>, Vec<Counters>, Vec<Counters>, Result<()>);

/// Reads until three readings `gap` apart (50 ms; 20 ms when the drop events accounted for every
/// probe) agree (the observation points count only the probe's ICMP, nothing else), within 3 s:
/// packets still in flight (a reply on its way back through a tunnel; on a loaded machine a
/// userspace VPN daemon can hold a packet for a while) land.
///
/// The gap runs from the start of one reading to the start of the next: a reading (an `nft`
/// process in every node, ~25 ms on a loaded machine) that took longer than the gap is followed
/// at once, since its snapshot of the counters is already that far from the previous one.
fn settle<T: PartialEq>(gap: Duration, mut read: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut started = Instant::now();
    let mut seen = read()?;
    let mut agreeing = 0;
    loop {
        std::thread::sleep(gap.saturating_sub(started.elapsed()));
        started = Instant::now();
        let again = read()?;
        agreeing = if again == seen { agreeing + 1 } else { 0 };
        seen = again;
        if agreeing >= 2 || Instant::now() >= deadline {
            return Ok(seen);
        }
    }
}

/// (counters before, the settled reading, counters after, the probe's own result)
type Around<T> = (Vec<Counters>, T, Vec<Counters>, Result<()>);

/// What both methods do around the probe: the SNMP counters before, the probe, readings of the
/// observation points until they settle ([`settle`]), the counters after.
fn around_probe<T: PartialEq>(
    nodes: &[TraceNode],
    probe: impl FnOnce() -> Result<bool>,
    mut read: impl FnMut() -> Result<T>,
) -> Result<Around<T>> {
    let t = Instant::now();
    let before = par(nodes, |n| snmp(n.netns))?;
    let t_before = t.elapsed();
    let probed = probe();
    let t_probe = t.elapsed();
    let gap = Duration::from_millis(if matches!(probed, Ok(true)) { 20 } else { 50 });
    let mut readings = 0;
    let seen = settle(gap, || {
        readings += 1;
        read()
    })?;
    let t_settle = t.elapsed();
    let after = par(nodes, |n| snmp(n.netns))?;
    if crate::config::get().trace_debug {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "trace timing: counters before {:.1} ms, probe {:.1} ms, settle {:.1} ms ({readings} readings, gap {} ms), counters after {:.1} ms",
            ms(t_before),
            ms(t_probe - t_before),
            ms(t_settle - t_probe),
            gap.as_millis(),
            ms(t.elapsed() - t_settle)
        );
    }
    Ok((before, seen, after, probed.map(|_| ())))
}

fn observe_nft(
    nodes: &[TraceNode],
    pid: &PidNs,
    cwd: &Path,
    fam: Fam,
    dest: IpAddr,
    probe: impl FnOnce() -> Result<bool>,
    release: impl FnOnce(),
) -> Result<Observed> {
    let ruleset = ruleset(fam, dest);
    // `nft -f FILE` (as the runner loads rulesets): a temporary file in the node's directory, so
    // that even a killed run leaves it only inside its work dir (swept with it).
    let mut file =
        tempfile::Builder::new().prefix(".vpnlab-trace-").suffix(".nft").tempfile_in(cwd).context("creating the trace ruleset file")?;
    std::io::Write::write_all(&mut file, ruleset.as_bytes()).context("writing the trace ruleset file")?;
    let path = file.path().to_string_lossy().into_owned();
    let installed = Installed { nodes, pid, cwd, done: false };
    let t = Instant::now();
    par(nodes, |n| {
        let out = nft(n.netns, pid, cwd, &["-f", path.as_str()])?;
        if !out.success() {
            let first: Vec<&str> = out.text.lines().take(3).collect();
            bail!("node `{}`: loading the trace table failed ({}):\n{}", n.name, out.describe_status(), first.join("\n"));
        }
        Ok(())
    })?;
    let debug = crate::config::get().trace_debug;
    if debug {
        eprintln!("trace timing: installing the nft tables in {} nodes {:.1} ms", nodes.len(), t.elapsed().as_secs_f64() * 1000.0);
    }
    let (before, texts, after, probed) = around_probe(nodes, probe, || collect(nodes, pid, cwd))?;
    if debug {
        debug_dump(nodes, &ruleset, &texts, &before, &after);
    }
    let obs: Vec<Obs> = texts.iter().map(|t| parse_sets(t)).collect::<Result<_>>()?;
    release();
    let t = Instant::now();
    installed.remove()?;
    if debug {
        eprintln!("trace timing: removing the tables {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((obs, before, after, probed))
}

fn observe_nflog(
    nodes: &[TraceNode],
    pid: &PidNs,
    cwd: &Path,
    fam: Fam,
    dest: IpAddr,
    probe: impl FnOnce() -> Result<bool>,
    release: impl FnOnce(),
) -> Result<Observed> {
    let mut installed = nflog::Installed::install(nodes, pid, cwd, fam, dest)?;
    let (before, counts, after, probed) = around_probe(nodes, probe, || installed.read())?;
    if crate::config::get().trace_debug {
        let texts: Vec<String> = counts.iter().map(|c| format!("{c:#?}")).collect();
        debug_dump(nodes, &nflog::rules(fam, true), &texts, &before, &after);
    }
    let obs = installed.obs()?;
    release();
    installed.remove()?;
    Ok((obs, before, after, probed))
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
    let argv: Vec<String> =
        ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3"].iter().map(|s| s.to_string()).chain([dest.to_string()]).collect();
    let kernel_drops = crate::drops::available().is_ok();
    trace_probing(Method::for_this_kernel(), kernel_drops, &nodes, pid, cwd, src, dest, |watch| {
        // With drop events, the ping stops as soon as both probes are seen dropped in the lab
        // instead of waiting out its -W 0.3.
        let mut lost = false;
        let mut decide = |slice: Duration| {
            let Some(w) = watch else { return false };
            lost = w.borrow_mut().wait(crate::drops::Mark::START, slice, |d| crate::probe::probes_lost(d, dest, 2, true)).is_some();
            lost
        };
        let cmd = crate::process::NodeCmd::new(spaces[src], pid, &argv, cwd);
        if watch.is_some() { cmd.capture_until(&mut decide) } else { cmd.capture() }?;
        Ok(lost)
    })
}

#[cfg(test)]
mod tests;
