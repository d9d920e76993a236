//! Tests of the trace: set parsing, the ruleset, and explanations of real small labs.

use super::ruleset::{nft, parse_sets};
use super::*;
use crate::process::run_capture;
use crate::topology::Topology;

/// `nft -j list sets inet` as nft 1.0.6 (Debian 12) prints it, with a set of another shape, an
/// element without a counter and a set of another table (a lab's own), all skipped.
#[test]
fn parses_set_listing() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "vpnlab_trace", "handle": 1}},
      {"set": {"family": "inet", "name": "pre_first_req", "table": "vpnlab_trace", "type": ["integer", "iface_index", "ipv4_addr", "ipv4_addr"],
        "handle": 2, "size": 65535, "flags": ["dynamic"], "elem": [
          {"elem": {"val": {"concat": [64, "eth0", "10.0.1.2", "10.0.2.2"]}, "counter": {"packets": 2, "bytes": 168}}},
          {"elem": {"val": {"concat": [63, "tun0", "10.0.1.2", "10.0.2.2"]}, "counter": {"packets": 1, "bytes": 84}}},
          {"elem": {"val": {"concat": [62, "tun0", "10.0.1.2", "10.0.2.2"]}}}], "stmt": [{"counter": null}]}},
      {"set": {"family": "inet", "name": "pre_first_ereq", "table": "vpnlab_trace", "type": ["integer", "iface_index", "icmp_type", "icmp_code"],
        "handle": 3, "size": 65535, "elem": [{"elem": {"val": {"concat": [63, "lo", "destination-unreachable", "net-unreachable"]},
        "counter": {"packets": 3, "bytes": 4}}}], "stmt": [{"counter": null}]}},
      {"set": {"family": "inet", "name": "pre6_first_req", "table": "vpnlab_trace", "type": ["integer", "iface_index", "ipv6_addr", "ipv6_addr"],
        "handle": 4, "elem": [{"elem": {"val": {"concat": [64, 7, "fd00::1", "fd00::2"]}, "counter": {"packets": 1, "bytes": 104}}}]}},
      {"set": {"family": "inet", "name": "pre_last_req", "table": "vpnlab_trace", "type": ["integer", "iface_index", "ipv4_addr", "ipv4_addr"],
        "handle": 5, "size": 65535, "stmt": [{"counter": null}]}},
      {"set": {"family": "inet", "name": "other", "table": "vpnlab_trace", "type": "ipv4_addr", "handle": 6, "elem": ["10.0.0.1"]}},
      {"set": {"family": "inet", "name": "pre_first_rep", "table": "filter", "type": ["integer", "iface_index", "ipv4_addr", "ipv4_addr"],
        "handle": 7, "elem": [{"elem": {"val": {"concat": [64, "eth0", "10.0.2.2", "10.0.1.2"]}, "counter": {"packets": 1, "bytes": 84}}}]}},
      {"chain": {"family": "inet", "table": "vpnlab_trace", "name": "out_first", "handle": 1, "type": "filter", "hook": "output", "prio": -500, "policy": "accept"}}]}"#;
    let o = parse_sets(json).unwrap();
    let v = &o.sets["pre_first_req"];
    assert_eq!(v.len(), 2);
    assert_eq!((v[0].ttl, v[0].dev.as_str(), v[0].packets), (64, "eth0", 2));
    assert_eq!((v[1].ttl, v[1].dev.as_str(), v[1].packets), (63, "tun0", 1));
    assert_eq!((v[0].saddr, v[0].daddr), (Some("10.0.1.2".parse().unwrap()), Some("10.0.2.2".parse().unwrap())));
    let e = &o.sets["pre_first_ereq"][0];
    assert_eq!(
        (e.ttl, e.dev.as_str(), e.itype.as_str(), e.code.as_str(), e.packets),
        (63, "lo", "destination-unreachable", "net-unreachable", 3)
    );
    let v6 = &o.sets["pre6_first_req"][0];
    assert_eq!(
        (v6.dev.as_str(), v6.daddr),
        ("7", Some("fd00::2".parse().unwrap())),
        "an interface index without a name is kept as its number"
    );
    assert!(!o.sets.contains_key("pre_last_req") && !o.sets.contains_key("other"));
    assert!(!o.sets.contains_key("pre_first_rep"), "another table's set is not the trace's");
    let gone = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "s", "table": "filter", "type": "ipv4_addr"}}]}"#;
    assert!(parse_sets(gone).unwrap_err().to_string().contains("is gone"), "no set of the trace table: an error, not an empty observation");
    assert!(parse_sets("table inet vpnlab_trace {").is_err(), "text instead of JSON is an error, not an empty observation");
}

/// `nft -j list chains` (nft 1.0.6): base chains with their hook and policy; regular chains
/// (no hook) are not listed.
#[test]
fn lists_base_chains() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"chain": {"family": "inet", "table": "vpnlab_trace", "name": "out_first", "handle": 1, "type": "filter", "hook": "output", "prio": -500, "policy": "accept"}},
      {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "ip", "table": "filter", "name": "helper", "handle": 3}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}"#;
    let c = ruleset::base_chains(json).unwrap();
    let got: Vec<String> = c.iter().map(|c| format!("{} {} {} {:?}", c.table, c.name, c.hook, c.policy)).collect();
    assert_eq!(
        got,
        [
            "inet vpnlab_trace out_first output Some(\"accept\")",
            "ip filter INPUT input Some(\"drop\")",
            "ip filter FORWARD forward Some(\"accept\")"
        ]
    );
}

/// a - r - b; `{A}`, `{R}`, `{B}` are more keys of the nodes, `{A_ADDRS}` extra addresses of
/// a:eth0 (also the drop locator's test lab: `drops/tests.rs`).
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

pub(crate) const FORWARDING: &str = "sysctl = { \"net.ipv4.ip_forward\" = \"1\" }";
pub(crate) const B_ROUTE: &str = "routes = [\"default via 10.0.2.1\"]";

pub(crate) fn chain(r: &str, b: &str, a_addrs: &str) -> String {
    CHAIN
        .replace("{R}", r)
        .replace("{B}", b)
        .replace("{A_ADDRS}", a_addrs)
        .replace("{A}", if a_addrs.is_empty() { "" } else { "sysctl = { \"net.ipv4.conf.all.arp_announce\" = \"2\" }" })
}

#[path = "tests_v6.rs"]
mod v6;

#[path = "tests_bridge.rs"]
mod bridge;

#[path = "tests_kernel.rs"]
mod kernel;

/// Builds the lab, runs `ping -c 2 -W 0.3 [ping_args] dest` in node 0 under the trace,
/// checks that nothing of the trace is left, and returns its lines.
fn run(lab_src: &str, dest: &str, ping_args: &[&str]) -> Vec<String> {
    run_with(lab_src, dest, ping_args, false)
}

/// [`run`], with the kernel's drop events (`kernel_drops`) or without.
fn run_with(lab_src: &str, dest: &str, ping_args: &[&str], kernel_drops: bool) -> Vec<String> {
    assert!(crate::env::is_root(), "building namespaces needs root: sudo -E cargo test");
    let dir = tempfile::tempdir().unwrap();
    let lab = crate::model::parse(&dir.path().join("lab.toml"), lab_src).unwrap_or_else(|e| panic!("{e:?}"));
    let pid = PidNs::create().unwrap();
    let topo = Topology::build(&lab).unwrap();
    for (i, n) in lab.nodes.iter().enumerate() {
        if let Some(rules) = &n.nft {
            let f = dir.path().join(format!("{}.nft", n.name));
            std::fs::write(&f, rules).unwrap();
            let out = nft(&topo.nodes[i].ns, &pid, dir.path(), &["-f", &f.to_string_lossy()]).unwrap();
            assert!(out.success(), "{}", out.text);
        }
    }
    let nodes: Vec<TraceNode> = lab.nodes.iter().zip(&topo.nodes).map(|(n, h)| TraceNode { name: &n.name, netns: &h.ns }).collect();
    // Both observation methods, one after the other on the same lab: the same lines.
    let mut lines = Vec::new();
    for method in [Method::Nft, Method::Nflog] {
        let opts = Opts {
            nodes: &nodes,
            pid: &pid,
            cwd: dir.path(),
            src: 0,
            dest: dest.parse().unwrap(),
            method: Some(method),
            kernel_drops: Some(kernel_drops),
        };
        let t = opts
            .run(|| {
                let mut argv: Vec<String> = ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3"].iter().map(|s| s.to_string()).collect();
                argv.extend(ping_args.iter().map(|s| s.to_string()));
                argv.push(dest.to_string());
                run_capture(&topo.nodes[0].ns, &pid, &argv, dir.path(), Duration::from_secs(10))?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{method:?}: {e:#}"));
        for n in &nodes {
            let out = nft(n.netns, &pid, dir.path(), &["list", "tables"]).unwrap();
            assert!(!out.text.contains(TABLE), "{}: {}", n.name, out.text);
            for save in ["iptables-save", "ip6tables-save"] {
                let out = run_capture(n.netns, &pid, &[save.to_string()], dir.path(), Duration::from_secs(10)).unwrap();
                assert!(!out.text.contains("NFLOG"), "{}: {save}: {}", n.name, out.text);
            }
        }
        lines.push(t.lines);
    }
    assert_eq!(lines[0], lines[1], "nft (left) and NFLOG (right) observations explain differently");
    if kernel_drops && ping_args.is_empty() {
        // The trace's own ping, stopped by the drop events, whose points are read once when
        // they account for every packet (`account.rs`): the same lines again.
        let opts =
            Opts { nodes: &nodes, pid: &pid, cwd: dir.path(), src: 0, dest: dest.parse().unwrap(), method: None, kernel_drops: Some(true) };
        assert_eq!(opts.ping().unwrap().lines, lines[0], "the trace's own ping (left) explains differently");
    }
    let t = Trace { lines: lines.remove(0), end: TraceEnd::Other };
    for l in &t.lines {
        eprintln!("{l}");
    }
    t.lines
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_no_route_back() {
    let lines = run(&chain(FORWARDING, "", ""), "10.0.2.2", &[]);
    assert_eq!(lines, NO_ROUTE_BACK);
}

/// b has no route back to a: its reply is never built (also what the kernel method keeps,
/// `tests_kernel.rs`: no drop to report).
const NO_ROUTE_BACK: [&str; 5] = [
    "request a: out eth0 (10.0.1.2 -> 10.0.2.2)",
    "request r: in eth0 -> forwarded out eth1",
    "request b: in eth0 -> delivered",
    "reply   b: to 10.0.1.2: found no route (Network is unreachable) -> dropped at b",
    "=> echo request reached b (10.0.2.2); its reply to 10.0.1.2 found no route (Network is unreachable) -> dropped at b",
];

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_forward_firewall() {
    let r = format!(
        "{FORWARDING}\nnft = \"\"\"\ntable inet f {{\n  chain fw {{ type filter hook forward priority 0; policy drop; }}\n}}\n\"\"\""
    );
    let lines = run(&chain(&r, B_ROUTE, ""), "10.0.2.2", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_forwarding_off() {
    let r = "sysctl = { \"net.ipv4.ip_forward\" = \"0\" }";
    let lines = run(&chain(r, B_ROUTE, ""), "10.0.2.2", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_working() {
    let lines = run(&chain(FORWARDING, B_ROUTE, ""), "10.0.2.2", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_no_route_at_router() {
    let lines = run(&chain(FORWARDING, B_ROUTE, ""), "10.9.9.9", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_reverse_path_filter() {
    let r = "sysctl = { \"net.ipv4.ip_forward\" = \"1\", \"net.ipv4.conf.all.rp_filter\" = \"1\" }";
    let lines = run(&chain(r, B_ROUTE, " 10.5.0.2/24"), "10.0.2.2", &["-I", "10.5.0.2"]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_no_route_at_source() {
    let src = chain(FORWARDING, B_ROUTE, "").replace("routes = [\"default via 10.0.1.1\"]", "");
    let lines = run(&src, "10.0.2.2", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_openvpn_missing_return_route() {
    use crate::process::{wait_until, Daemon};
    use std::os::unix::fs::PermissionsExt;
    assert!(crate::env::is_root(), "needs root: sudo -E cargo test");
    if crate::env::which("openvpn").is_none() {
        assert!(!crate::snapshot::is_ci(), "openvpn is not installed (CI=true: a missing program is a failure)");
        eprintln!("skipped: openvpn is not installed");
        return;
    }
    let lab_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/openvpn/missing-return-route");
    let lab = crate::model::load(&lab_dir).unwrap_or_else(|e| panic!("{e:?}"));
    let work = crate::workdir::WorkDir::new("trace-test").unwrap();
    let pid = PidNs::create().unwrap();
    let topo = Topology::build(&lab).unwrap();
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
        let ok = wait_until(Instant::now() + Duration::from_secs(15), || {
            crate::process::read_from(&log, 0).lines().any(|l| re.is_match(l)).then_some(())
        });
        assert!(ok.is_some(), "{} not ready:\n{}", s.name, d.tail(20));
        daemons.push(d);
    }
    let idx = |n: &str| lab.node_index(n).unwrap();
    let nodes: Vec<TraceNode> = lab.nodes.iter().zip(&topo.nodes).map(|(n, h)| TraceNode { name: &n.name, netns: &h.ns }).collect();
    let client = idx("client");
    let cwd = work.node_dir("client");
    let go_from = |src: usize, dest: &str| -> Vec<String> {
        let mut by = [Method::Nft, Method::Nflog].map(|method| {
            let opts = Opts {
                nodes: &nodes,
                pid: &pid,
                cwd: &cwd,
                src,
                dest: dest.parse().unwrap(),
                method: Some(method),
                kernel_drops: Some(false),
            };
            opts.run(|| {
                let argv: Vec<String> = ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "0.3", dest].iter().map(|s| s.to_string()).collect();
                run_capture(&topo.nodes[src].ns, &pid, &argv, &cwd, Duration::from_secs(10))?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{method:?}: {e:#}"))
            .lines
        });
        for l in &by[0] {
            eprintln!("{l}");
        }
        assert_eq!(by[0], by[1], "nft (left) and NFLOG (right) observations explain differently");
        std::mem::take(&mut by[0])
    };
    let go = |dest: &str| go_from(client, dest);
    let gw = go("10.198.0.1");
    // An address of the VPN subnet that no client has: the server's OpenVPN drops it.
    let nobody = go_from(idx("server"), "10.200.0.77");
    let lanhost = go("10.198.1.12");
    // Without its upstream, the gateway's own reply finds no route at all.
    let out = run_capture(
        &topo.nodes[idx("gateway")].ns,
        &pid,
        &["ip".into(), "route".into(), "del".into(), "default".into()],
        &cwd,
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success(), "{}", out.text);
    let gw_no_upstream = go("10.198.0.1");
    let out = run_capture(
        &topo.nodes[idx("server")].ns,
        &pid,
        &[
            "iptables".into(),
            "-t".into(),
            "nat".into(),
            "-A".into(),
            "POSTROUTING".into(),
            "-o".into(),
            "eth1".into(),
            "-j".into(),
            "MASQUERADE".into(),
        ],
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_no_arp_answer() {
    let lines = run(&chain(FORWARDING, B_ROUTE, ""), "10.0.2.99", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_own_address() {
    let lines = run(&chain(FORWARDING, B_ROUTE, ""), "10.0.1.2", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_routing_loop() {
    let r = format!("{FORWARDING}\nroutes = [\"10.7.0.0/24 via 10.0.2.2\"]");
    let b = format!("{FORWARDING}\n{B_ROUTE}");
    let lines = run(&chain(&r, &b, ""), "10.7.0.1", &[]);
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
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace_input_firewall() {
    let b = format!("{B_ROUTE}\nnft = \"\"\"\ntable inet f {{\n  chain i {{ type filter hook input priority 0; icmp type echo-request drop; }}\n}}\n\"\"\"");
    let lines = run(&chain(FORWARDING, &b, ""), "10.0.2.2", &[]);
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

#[test]
fn legacy_chains_name_firewalls_not_observation_points() {
    let save = "# Generated by iptables-save\n*mangle\n:PREROUTING ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n-A FORWARD -p icmp -j NFLOG --nflog-prefix vpnlab_trace_fwd_first --nflog-group 4243\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:252]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 1194 -j DROP\nCOMMIT\n";
    let fwd = walk::legacy_chains(save, ruleset::Hook::Fwd);
    assert_eq!(fwd, [("filter".to_string(), "FORWARD".to_string(), "drop".to_string())]);
    let input = walk::legacy_chains(save, ruleset::Hook::In);
    assert_eq!(input, [("filter".to_string(), "INPUT".to_string(), "accept".to_string())]);
    assert!(walk::legacy_chains(save, ruleset::Hook::Out).is_empty());
}

#[test]
fn nflog_classifies_like_the_nft_sets() {
    let fam = ruleset::Fam { v6: false };
    let dest: IpAddr = "10.0.2.2".parse().unwrap();
    // An echo request 10.0.1.2 -> 10.0.2.2, TTL 63.
    let mut req = vec![0x45, 0, 0, 84, 0, 0, 0x40, 0, 63, 1, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2, 8, 0, 0, 0, 0, 1, 0, 1];
    let (k, key) = nflog::classify(fam, dest, &req).unwrap();
    assert_eq!(k, ruleset::Kind::Req);
    assert!(format!("{key:?}").contains("ttl: 63"), "{key:?}");
    // The router's net-unreachable about it (outer 10.0.1.1 -> 10.0.1.2, TTL 64).
    let mut err = vec![0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 1, 1, 10, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&req);
    let (k, key) = nflog::classify(fam, dest, &err).unwrap();
    assert_eq!(k, ruleset::Kind::ErrReq);
    assert!(format!("{key:?}").contains("\"destination-unreachable\"") && format!("{key:?}").contains("\"net-unreachable\""), "{key:?}");
    // Another destination: not the probe's.
    req[19] = 3;
    assert!(nflog::classify(fam, dest, &req).is_none());
}
