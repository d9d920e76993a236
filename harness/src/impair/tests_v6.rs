//! IPv6 impairment on a real lab: the ip6tables rule, exact counts although neighbour
//! discovery crosses the same interface, IPv4 left alone, duplicates from the IPv6 raw socket.

use super::impairer::rule_argv_family;
use super::*;
use crate::ns::{NetNs, PidNs};
use crate::process::run_capture;
use crate::topology::Topology;
use std::net::UdpSocket;
use std::time::Duration;

/// a -- eth0 r eth1 -- b, dual-stack; impairments go on r's eth1 (towards b).
const LAB6: &str = r#"[lab]
title = "impair6"
[nodes.a]
routes = ["default via 10.0.1.1", "default via 2001:db8:1::1"]
[nodes.r]
sysctl = { "net.ipv4.ip_forward" = "1", "net.ipv6.conf.all.forwarding" = "1" }
[nodes.b]
routes = ["default via 10.0.2.1", "default via 2001:db8:2::1"]
[[links]]
a = "a:eth0 10.0.1.2/24 2001:db8:1::2/64"
b = "r:eth0 10.0.1.1/24 2001:db8:1::1/64"
[[links]]
a = "r:eth1 10.0.2.1/24 2001:db8:2::1/64"
b = "b:eth0 10.0.2.2/24 2001:db8:2::2/64"
[scenarios.s]
steps = ["a: ping 2001:db8:2::2"]
"#;

struct Net {
    topo: Topology,
    pid: PidNs,
    dir: tempfile::TempDir,
}

impl Net {
    fn build() -> Net {
        assert!(crate::env::is_root(), "building namespaces needs root: sudo -E cargo test");
        let dir = tempfile::tempdir().unwrap();
        let lab = crate::model::parse(&dir.path().join("lab.toml"), LAB6).unwrap();
        let pid = PidNs::create().unwrap();
        let topo = Topology::build(&lab).unwrap();
        Net { topo, pid, dir }
    }
    fn ns(&self, i: usize) -> &NetNs {
        &self.topo.nodes[i].ns
    }
    fn impair(&self, imp: Impairment, proto: Option<Proto>, queue: u16) -> Impairer {
        Impairer::start_family(self.ns(1), &self.pid, self.dir.path(), "eth1", imp, proto, Family::Ipv6, queue)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
    fn run(&self, ns: &NetNs, argv: &[&str]) -> String {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = run_capture(ns, &self.pid, &argv, self.dir.path(), Duration::from_secs(30)).unwrap();
        assert!(!out.timed_out, "{argv:?} timed out");
        out.text
    }
    /// (transmitted, received) of `count` pings from a to `dest`.
    fn ping(&self, dest: &str, count: u32) -> (u32, u32) {
        let c = count.to_string();
        let out = self.run(self.ns(0), &["ping", "-n", "-c", &c, "-i", "0.01", "-W", "1", dest]);
        let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no summary in:\n{out}"));
        let nums: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
        (nums[0], nums[1])
    }
    fn rules6(&self) -> String {
        self.run(self.ns(1), &["ip6tables", "-t", "mangle", "-S", "POSTROUTING"])
    }
    /// r's neighbour entry for b (or none): flushed so that the next packet makes r solicit.
    fn flush_neighbours(&self) {
        self.run(self.ns(1), &["ip", "-6", "neigh", "flush", "dev", "eth1"]);
    }
}

#[test]
fn ip6tables_rule_text() {
    assert_eq!(
        rule_argv_family("-I", "eth1", Some(Proto::Icmp), Family::Ipv6, 3).join(" "),
        "ip6tables -w 5 -t mangle -I POSTROUTING -o eth1 -p ipv6-icmp -m mark ! --mark 0x76700000/0xffff0000 -j NFQUEUE --queue-num 3 --queue-bypass"
    );
    assert_eq!(rule_argv_family("-D", "eth1", None, Family::Ipv4, 0)[0], "iptables");
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn impair_ipv6_drop_every_5_counts_exactly_despite_neighbour_discovery() {
    let net = Net::build();
    // Without an impairment nothing is lost (so the checks below can fail).
    assert_eq!(net.ping("2001:db8:2::2", 20), (20, 20));

    net.flush_neighbours();
    let imp = net.impair(Impairment::DropEvery(5), None, 0);
    assert!(net.rules6().contains("-j NFQUEUE --queue-num 0 --queue-bypass"), "{}", net.rules6());
    // r must solicit b first (the neighbour entry is gone): the solicitation leaves eth1 too,
    // through the same rule, and is neither dropped nor counted.
    assert_eq!(net.ping("2001:db8:2::2", 20), (20, 16));
    // IPv4 is not queued by an IPv6 impairment.
    assert_eq!(net.ping("10.0.2.2", 20), (20, 20));
    imp.check().unwrap();
    let st = imp.stop(net.ns(1), &net.pid).unwrap();
    assert_eq!(st, Stats { seen: 20, dropped: 4, ..Stats::default() });
    assert!(!net.rules6().contains("NFQUEUE"), "{}", net.rules6());
    assert_eq!(net.ping("2001:db8:2::2", 20), (20, 20), "after stop");

    // `icmp` is ICMPv6 here; dropping (not `stop`) removes the rule too.
    let imp = net.impair(Impairment::DropEvery(2), Some(Proto::Icmp), 1);
    assert!(net.rules6().contains("-p ipv6-icmp"), "{}", net.rules6());
    assert_eq!(net.ping("2001:db8:2::2", 10), (10, 5));
    drop(imp);
    assert!(!net.rules6().contains("NFQUEUE"), "{}", net.rules6());
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn impair_ipv6_duplicate_every_5() {
    let net = Net::build();
    let tx = net.ns(0).run(|| UdpSocket::bind("[2001:db8:1::2]:0")).unwrap().unwrap();
    let rx = net.ns(2).run(|| UdpSocket::bind("[2001:db8:2::2]:7000")).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let send = |seqs: &mut dyn Iterator<Item = u32>| {
        for s in seqs {
            tx.send_to(&s.to_be_bytes(), "[2001:db8:2::2]:7000").unwrap();
        }
    };
    // Everything until the marker (sent unimpaired, after stop).
    let recv_all = || {
        tx.send_to(&u32::MAX.to_be_bytes(), "[2001:db8:2::2]:7000").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        loop {
            let n = rx.recv(&mut buf).unwrap_or_else(|e| panic!("after {got:?}: {e}"));
            match u32::from_be_bytes(buf[..n].try_into().unwrap()) {
                u32::MAX => return got,
                s => got.push(s),
            }
        }
    };
    send(&mut (1..=20));
    assert_eq!(recv_all(), (1..=20).collect::<Vec<_>>(), "no copies without the impairment");
    let imp = net.impair(Impairment::Duplicate { every: 5 }, Some(Proto::Udp), 4);
    send(&mut (1..=20));
    imp.check().unwrap();
    let st = imp.stop(net.ns(1), &net.pid).unwrap();
    let expected: Vec<u32> = (1..=20).flat_map(|s| if s % 5 == 0 { vec![s, s] } else { vec![s] }).collect();
    assert_eq!(recv_all(), expected);
    assert_eq!(st, Stats { seen: 20, duplicated: 4, ..Stats::default() });
}
