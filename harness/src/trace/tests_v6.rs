//! The trace of IPv6 probes (ICMPv6, nft `ip6`/`icmpv6` and ip6tables NFLOG points), on both
//! observation methods: `run` asserts that they explain alike.

use super::run;

/// a - r - b in IPv6; `{R}`, `{B}` are more keys of r and b.
const CHAIN6: &str = r#"
[lab]
title = "trace6"
[nodes.a]
routes = ["default via 2001:db8:1::1"]
[nodes.r]
{R}
[nodes.b]
{B}
[[links]]
a = "a:eth0 2001:db8:1::2/64"
b = "r:eth0 2001:db8:1::1/64"
[[links]]
a = "r:eth1 2001:db8:2::1/64"
b = "b:eth0 2001:db8:2::2/64"
[scenarios.s]
steps = []
"#;

const FORWARDING6: &str = "sysctl = { \"net.ipv6.conf.all.forwarding\" = \"1\" }";
const B_ROUTE6: &str = "routes = [\"default via 2001:db8:2::1\"]";

fn chain6(r: &str, b: &str) -> String {
    CHAIN6.replace("{R}", r).replace("{B}", b)
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace6_working() {
    let lines = run(&chain6(FORWARDING6, B_ROUTE6), "2001:db8:2::2", &[]);
    assert_eq!(
        lines,
        [
            "request a: out eth0 (2001:db8:1::2 -> 2001:db8:2::2)",
            "request r: in eth0 -> forwarded out eth1",
            "request b: in eth0 -> delivered",
            "reply   b: out eth0 (2001:db8:2::2 -> 2001:db8:1::2)",
            "reply   r: in eth1 -> forwarded out eth0",
            "reply   a: in eth0 -> delivered",
            "=> echo request delivered to b (2001:db8:2::2); reply delivered back to a",
        ]
    );
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace6_no_route_back() {
    let lines = run(&chain6(FORWARDING6, ""), "2001:db8:2::2", &[]);
    assert_eq!(
        lines,
        [
            "request a: out eth0 (2001:db8:1::2 -> 2001:db8:2::2)",
            "request r: in eth0 -> forwarded out eth1",
            "request b: in eth0 -> delivered",
            "reply   b: to 2001:db8:1::2: found no route (Network is unreachable) [Ip6OutNoRoutes rose] -> dropped at b",
            "=> echo request reached b (2001:db8:2::2); its reply to 2001:db8:1::2 found no route (Network is unreachable) -> dropped at b",
        ]
    );
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace6_reply_dropped_at_a_router_without_a_route() {
    // b answers through r, which has no route back to a's other prefix (a pings from it): r
    // drops the reply and tells b so ("no route"), the same story as the IPv6 lab's upstream.
    let a_src = "2001:db8:9::2";
    let src = chain6(FORWARDING6, B_ROUTE6).replace("a:eth0 2001:db8:1::2/64", "a:eth0 2001:db8:1::2/64 2001:db8:9::2/64");
    let lines = run(&src, "2001:db8:2::2", &["-I", a_src]);
    assert_eq!(
        lines,
        [
            "request a: out eth0 (2001:db8:9::2 -> 2001:db8:2::2)",
            "request r: in eth0 -> forwarded out eth1",
            "request b: in eth0 -> delivered",
            "reply   b: out eth0 (2001:db8:2::2 -> 2001:db8:9::2)",
            "reply   r: in eth1 -> found no route to 2001:db8:9::2 (Network is unreachable) [Ip6InNoRoutes rose] -> dropped at r",
            "error   r: ICMP destination-unreachable (no-route) about the reply, out eth1",
            "error   b: in eth0 -> delivered",
            "=> echo request reached b (2001:db8:2::2); its reply to 2001:db8:9::2 found no route (Network is unreachable) -> dropped at r",
        ]
    );
}

#[test]
#[cfg_attr(vpnlab_not_root, ignore = "needs root: sudo -E cargo test")]
fn trace6_forward_firewall() {
    let r = format!(
        "{FORWARDING6}\nnft = \"\"\"\ntable inet f {{\n  chain fw {{ type filter hook forward priority 0; policy drop; }}\n}}\n\"\"\""
    );
    let lines = run(&chain6(&r, B_ROUTE6), "2001:db8:2::2", &[]);
    assert_eq!(
        lines,
        [
            "request a: out eth0 (2001:db8:1::2 -> 2001:db8:2::2)",
            "request r: in eth0 -> routed out eth1 -> was dropped in forward at r (firewall: inet f fw, policy drop)",
            "=> echo request to 2001:db8:2::2 reached r; it was dropped in forward at r (firewall: inet f fw, policy drop)",
        ]
    );
}
