//! The drop locator on real namespaces: what it reports, that a lab sees only its own drops,
//! and negative pings decided by them (early when the probes die inside the lab, never when
//! they are answered, never by another lab's drops).

use super::*;
use crate::model::step::{Action, PingExpect};
use crate::ns::PidNs;
use crate::process::run_capture;
use crate::topology::Topology;
use crate::trace::tests::{chain, B_ROUTE, FORWARDING};
use std::net::IpAddr;
use std::time::Instant;

/// r drops echo replies in forward, silently: the probe dies inside the lab and no ICMP error
/// tells the pinger.
const DROP_REPLIES: &str = "table inet f {\n chain fw { type filter hook forward priority 0; icmp type echo-reply drop; }\n}\n";

struct Built {
    _dir: tempfile::TempDir,
    cwd: std::path::PathBuf,
    pid: PidNs,
    topo: Topology,
}

fn build(b: &str, r_nft: Option<&str>) -> Built {
    assert!(crate::env::is_root(), "building namespaces needs root: sudo -E cargo test");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    // a - r - b, r forwarding; `b`: more keys of b.
    let src = chain(FORWARDING, &format!("{B_ROUTE}\n{b}"), "");
    let lab = crate::model::parse(&cwd.join("lab.toml"), &src).unwrap_or_else(|e| panic!("{e:?}"));
    let pid = PidNs::create().unwrap();
    let topo = Topology::build(&lab).unwrap();
    if let Some(rules) = r_nft {
        let f = cwd.join("r.nft");
        std::fs::write(&f, rules).unwrap();
        let out =
            run_capture(&topo.nodes[1].ns, &pid, &["nft".into(), "-f".into(), f.to_string_lossy().into()], &cwd, Duration::from_secs(10))
                .unwrap();
        assert!(out.success(), "{}", out.text);
    }
    Built { _dir: dir, cwd, pid, topo }
}

impl Built {
    fn spaces(&self) -> Vec<&NetNs> {
        self.topo.nodes.iter().map(|h| &h.ns).collect()
    }

    /// `a: ping -c2 DEST -> unreachable`, with this lab's drop events if given; the fact and
    /// how long the ping took.
    fn unreachable_ping(&self, dest: &str, watch: Option<&mut Watch>) -> (crate::facts::PingFact, Duration) {
        let t0 = Instant::now();
        let dest: IpAddr = dest.parse().unwrap();
        let f = crate::probe::ping(&self.topo.nodes[0].ns, &self.pid, &self.cwd, "a", None, dest, 2, None, &PingExpect::Unreachable, watch)
            .unwrap();
        (f, t0.elapsed())
    }
}

fn unreachable_check(f: &crate::facts::PingFact, dest: &str) -> Result<(), crate::judge::Miss> {
    let action = Action::Ping { node: 0, src: None, dest: dest.parse().unwrap(), count: 2, size: None, expect: PingExpect::Unreachable };
    crate::judge::judge(&action, &crate::facts::Fact::Ping(f.clone()))
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn names_a_routing_drop() {
    require().unwrap();
    let lab = build("", None);
    let mut w = Watch::start(&lab.spaces()).unwrap();
    // r has no route to 10.9.9.9 (b's default route is not r's).
    let out = run_capture(
        &lab.topo.nodes[0].ns,
        &lab.pid,
        &["ping", "-n", "-c", "1", "-W", "1", "10.9.9.9"].map(String::from),
        &lab.cwd,
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.text.contains("Unreachable"), "{}", out.text);
    let mut seen = w.since(Mark::START).to_vec();
    name_devs(&mut seen, &lab.spaces());
    let at_r: Vec<String> = seen
        .iter()
        .filter(|d| d.node == 1 && d.packet.as_ref().is_some_and(|p| p.dst == "10.9.9.9".parse::<IpAddr>().unwrap()))
        .map(|d| d.describe())
        .collect();
    assert_eq!(at_r.first().map(String::as_str), Some("eth0, ip_error, IP_INNOROUTES"), "{seen:#?}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn negative_ping_decided_by_drops() {
    require().unwrap();
    let lab = build("", Some(DROP_REPLIES));
    let mut w = Watch::start(&lab.spaces()).unwrap();
    let (f, took) = lab.unreachable_ping("10.0.2.2", Some(&mut w));
    assert_eq!((f.sent, f.received), (2, 0), "{f:?}");
    assert_eq!(f.dropped.len(), 2, "one drop per probe: {f:?}");
    assert!(f.dropped.iter().all(|d| d.node == 1 && d.reason == "NETFILTER_DROP"), "{:#?}", f.dropped);
    assert!(took < crate::probe::SILENCE, "decided by the drops, not by {:?} of silence: took {took:?}", crate::probe::SILENCE);
    unreachable_check(&f, "10.0.2.2").unwrap();
    // The same without the drop events: the silence decides.
    let (f, took) = lab.unreachable_ping("10.0.2.2", None);
    assert!(f.dropped.is_empty() && took >= crate::probe::SILENCE, "{f:?} {took:?}");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn negative_ping_still_fails_when_answered() {
    require().unwrap();
    let lab = build("", None);
    let mut w = Watch::start(&lab.spaces()).unwrap();
    let (f, _) = lab.unreachable_ping("10.0.2.2", Some(&mut w));
    assert_eq!(f.received, 2, "{f:?}");
    assert!(f.dropped.is_empty(), "{:#?}", f.dropped);
    let miss = unreachable_check(&f, "10.0.2.2").unwrap_err();
    assert_eq!(miss.expected, "unreachable");
}

/// Two labs with the same addresses at once: one drops every probe (and keeps pinging), the
/// other's target stays silent (ignores echo requests: no reply, no drop). The silent lab's
/// check waits out its silence: the other lab's drops decide nothing there.
#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn another_labs_drops_decide_nothing() {
    require().unwrap();
    let dropping = build("", Some(DROP_REPLIES));
    let silent = build("sysctl = { \"net.ipv4.icmp_echo_ignore_all\" = \"1\" }", None);
    let mut wd = Watch::start(&dropping.spaces()).unwrap();
    let mut ws = Watch::start(&silent.spaces()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (silent_fact, took, dropped_facts) = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut facts = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || facts.is_empty() {
                facts.push(dropping.unreachable_ping("10.0.2.2", Some(&mut wd)).0);
            }
            facts
        });
        let (f, took) = silent.unreachable_ping("10.0.2.2", Some(&mut ws));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (f, took, other.join().unwrap())
    });
    assert!(dropped_facts.iter().all(|f| f.dropped.len() == 2), "the dropping lab's checks were decided by its drops");
    assert!(silent_fact.dropped.is_empty(), "{:#?}", silent_fact.dropped);
    assert!(took >= crate::probe::SILENCE, "the silent lab's check waited its silence: {took:?}");
    unreachable_check(&silent_fact, "10.0.2.2").unwrap();
    let echo_drops = ws.since(Mark::START).iter().filter(|d| d.packet.as_ref().and_then(|p| p.echo()).is_some()).count();
    assert_eq!(echo_drops, 0, "the silent lab saw no echo dropped: {:#?}", ws.since(Mark::START));
}

/// `probe::probes_lost` on made-up drops: which prove a negative check's probes lost.
#[test]
fn which_drops_decide_a_negative_check() {
    let (me, dest): (IpAddr, IpAddr) = ("10.0.1.2".parse().unwrap(), "10.0.2.2".parse().unwrap());
    let echo = |reply: bool, seq: u16| {
        let (src, dst) = if reply { (dest, me) } else { (me, dest) };
        Packet { src, dst, ttl: 63, l4: L4::Echo { reply, id: 7, seq } }
    };
    let drop = |p: Packet, reason: &str| Drop {
        node: 1,
        ifindex: 2,
        dev: String::new(),
        at: String::new(),
        function: "f".into(),
        reason: reason.into(),
        packet: Some(p),
    };
    let lost = |d: &[Drop], requests: bool| crate::probe::probes_lost(d, dest, 2, requests).map(|v| v.len());
    let replies = [drop(echo(true, 1), "IP_INNOROUTES"), drop(echo(true, 2), "IP_INNOROUTES")];
    assert_eq!(lost(&replies, false), Some(2));
    assert_eq!(lost(&replies[..1], false), None, "one probe may still be answered");
    // Requests may have drawn an ICMP error that ping would print: only the trace counts them.
    let requests = [drop(echo(false, 1), "IP_INNOROUTES"), drop(echo(false, 2), "IP_INNOROUTES")];
    assert_eq!(lost(&requests, false), None);
    assert_eq!(lost(&requests, true), Some(2));
    // A reply handed to ping's raw socket and freed for want of a ping socket is delivered.
    let delivered = [drop(echo(true, 1), "NO_SOCKET"), drop(echo(true, 2), "NO_SOCKET")];
    assert_eq!(lost(&delivered, false), None);
    // An ICMP error about a request, itself dropped: that probe is lost.
    let error = |seq: u16| Packet {
        src: "10.0.1.1".parse().unwrap(),
        dst: me,
        ttl: 64,
        l4: L4::IcmpError { itype: 3, code: 0, quoted: Some(Box::new(echo(false, seq))) },
    };
    assert_eq!(lost(&[drop(error(1), "NETFILTER_DROP"), drop(error(2), "NETFILTER_DROP")], false), Some(2));
    // Another echo id (another pinger): not ours together.
    let mut other = echo(true, 2);
    other.l4 = L4::Echo { reply: true, id: 8, seq: 2 };
    assert_eq!(lost(&[replies[0].clone(), drop(other, "IP_INNOROUTES")], false), None);
}
