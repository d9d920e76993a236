//! Around the probe, for both methods: the observation points installed, the SNMP counters
//! before, the probe, readings of the points until they settle (or until one accounts for every
//! packet of the probe: `account.rs`), the counters after, the points removed.

use super::account::complete;
use super::nftsh::{each, one_line, NftShell};
use super::ruleset::{par, parse_sets, ruleset, snmp, Counters, Fam, Installed, Obs};
use super::{nflog, Opts, TraceNode};
use crate::drops::Drop;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// What the observation gave: every node's sets, its SNMP counters before and after the probe,
/// and the probe's own result.
pub(super) struct Observed {
    pub(super) obs: Vec<Obs>,
    pub(super) before: Vec<Counters>,
    pub(super) after: Vec<Counters>,
    pub(super) probed: Result<()>,
}

/// What the observation calls back: `probe` sends the traffic (true: drop events accounted for
/// every probe, the probe's traffic is over), `events` gives the drop events so far, `release`
/// is called once the points have settled (the drop locator's events taken, then it unloads).
pub(super) struct Hooks<P, E, R> {
    pub(super) probe: P,
    pub(super) events: E,
    pub(super) release: R,
}

/// One reading of the nft observation points: the drop events taken just before it, and every
/// node's `list sets inet` (JSON).
#[derive(PartialEq)]
struct Reading {
    drops: Vec<Drop>,
    texts: Vec<String>,
}

pub(super) fn by_nft(
    o: &Opts,
    fam: Fam,
    hooks: Hooks<impl FnOnce() -> Result<bool>, impl Fn() -> Vec<Drop>, impl FnOnce()>,
) -> Result<Observed> {
    let (nodes, pid, cwd) = (o.nodes, o.pid, o.cwd);
    let ruleset = ruleset(fam, o.dest);
    let line = one_line(&ruleset);
    // Removes the tables with an `nft` process per node if the shells do not (error, panic).
    let mut installed = Installed { nodes, pid, cwd, done: false };
    let t = Instant::now();
    let mut shells = par(nodes, |n| NftShell::start(n, pid, cwd))?;
    // Loaded, and listed to see it there (the listing ends the exchange: `nftsh.rs`).
    let loaded = each(&mut shells, |sh| sh.list_after(&[line.as_str()], "loading the trace table"))?;
    for (n, l) in nodes.iter().zip(&loaded) {
        parse_sets(l).with_context(|| format!("node `{}`: loading the trace table", n.name))?;
    }
    let debug = crate::config::get().trace_debug;
    if debug {
        eprintln!("trace timing: installing the nft tables in {} nodes {:.1} ms", nodes.len(), t.elapsed().as_secs_f64() * 1000.0);
    }
    let events = hooks.events;
    let read = || -> Result<Reading> {
        let drops = events();
        Ok(Reading { drops, texts: each(&mut shells, |sh| sh.list_after(&[], "reading the trace table"))? })
    };
    let dest = o.dest;
    let last =
        |r: &Reading| r.texts.iter().map(|t| parse_sets(t)).collect::<Result<Vec<Obs>>>().is_ok_and(|obs| complete(&obs, &r.drops, dest));
    let (before, reading, after, probed) = around_probe(nodes, hooks.probe, read, last)?;
    if debug {
        debug_dump(nodes, &ruleset, &reading.texts, &before, &after);
    }
    let obs: Vec<Obs> = reading.texts.iter().map(|t| parse_sets(t)).collect::<Result<_>>()?;
    (hooks.release)();
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = shells.into_iter().map(|sh| s.spawn(move || sh.finish())).collect();
        hs.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("trace thread panicked"))))
    })?;
    installed.done = true;
    if debug {
        eprintln!("trace timing: removing the tables {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Observed { obs, before, after, probed })
}

pub(super) fn by_nflog(
    o: &Opts,
    fam: Fam,
    hooks: Hooks<impl FnOnce() -> Result<bool>, impl Fn() -> Vec<Drop>, impl FnOnce()>,
) -> Result<Observed> {
    let mut installed = nflog::Installed::install(o.nodes, o.pid, o.cwd, fam, o.dest)?;
    // The NFLOG points are read until they settle: no reading is taken as the last one early.
    let (before, counts, after, probed) = around_probe(o.nodes, hooks.probe, || installed.read(), |_| false)?;
    if crate::config::get().trace_debug {
        let texts: Vec<String> = counts.iter().map(|c| format!("{c:#?}")).collect();
        debug_dump(o.nodes, &nflog::rules(fam, true), &texts, &before, &after);
    }
    let obs = installed.obs()?;
    (hooks.release)();
    installed.remove()?;
    Ok(Observed { obs, before, after, probed })
}

/// Reads until three readings `gap` apart (50 ms; 20 ms when the drop events accounted for every
/// probe) agree (the observation points count only the probe's ICMP, nothing else), within 3 s:
/// packets still in flight (a reply on its way back through a tunnel; on a loaded machine a
/// userspace VPN daemon can hold a packet for a while) land. A reading that `last` accepts (it
/// accounts for every packet of the probe: `account.rs`) ends the wait at once.
///
/// The gap runs from the start of one reading to the start of the next: a reading (an `nft`
/// process in every node, ~25 ms on a loaded machine) that took longer than the gap is followed
/// at once, since its snapshot of the counters is already that far from the previous one.
/// Returns the reading and how many were taken.
fn settle<T: PartialEq>(gap: Duration, mut read: impl FnMut() -> Result<T>, last: impl Fn(&T) -> bool) -> Result<(T, usize)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut started = Instant::now();
    let mut seen = read()?;
    let mut readings = 1;
    if last(&seen) {
        return Ok((seen, readings));
    }
    let mut agreeing = 0;
    loop {
        std::thread::sleep(gap.saturating_sub(started.elapsed()));
        started = Instant::now();
        let again = read()?;
        readings += 1;
        if last(&again) {
            return Ok((again, readings));
        }
        agreeing = if again == seen { agreeing + 1 } else { 0 };
        seen = again;
        if agreeing >= 2 || Instant::now() >= deadline {
            return Ok((seen, readings));
        }
    }
}

#[cfg(test)]
thread_local! {
    /// How many readings the last trace on this thread took (tests: the accounting's shortcut).
    pub(super) static READINGS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// (counters before, the settled reading, counters after, the probe's own result)
type Around<T> = (Vec<Counters>, T, Vec<Counters>, Result<()>);

/// What both methods do around the probe: the SNMP counters before, the probe, readings of the
/// observation points until they settle ([`settle`]; `last` is asked only when the probe says
/// its traffic is over and accounted for), the counters after.
fn around_probe<T: PartialEq>(
    nodes: &[TraceNode],
    probe: impl FnOnce() -> Result<bool>,
    read: impl FnMut() -> Result<T>,
    last: impl Fn(&T) -> bool,
) -> Result<Around<T>> {
    let t = Instant::now();
    let before = par(nodes, |n| snmp(n.netns))?;
    let t_before = t.elapsed();
    let probed = probe();
    let t_probe = t.elapsed();
    let accounted = matches!(probed, Ok(true));
    let gap = Duration::from_millis(if accounted { 20 } else { 50 });
    let (seen, readings) = settle(gap, read, |r| accounted && last(r))?;
    let t_settle = t.elapsed();
    #[cfg(test)]
    READINGS.set(readings);
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
